// Portal placeholder: log in, list desktops, get a console ticket and the ways to use it.
// The full portal (noVNC, spice-html5, .vv downloads) is built on this API.
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error ? `${data.error.message} (${data.error.code})` : `HTTP ${res.status}`);
  return data;
}

async function showDesktops() {
  const me = await api('GET', '/api/me');
  const list = await api('GET', '/api/desktops');
  $('login-view').hidden = true;
  $('desktops-view').hidden = false;
  const ul = $('desktops');
  ul.replaceChildren();
  for (const d of list) {
    const li = document.createElement('li');
    li.textContent = `${d.vm} (${d.state}) `;
    for (const p of d.protocols) {
      const b = document.createElement('button');
      b.textContent = `Ticket for ${p}`;
      b.addEventListener('click', async () => {
        const t = await api('POST', `/api/desktops/${encodeURIComponent(d.vm)}/tickets`, { protocol: p });
        const host = location.host;
        $('ticket').textContent =
          `WebSocket: wss://${host}${t.websocket}\n` +
          `CONNECT (curl): curl -p --proxy-insecure -x https://${host} -U ${me.name}:${t.ticket} telnet://${t.connect}\n` +
          `CONNECT with the ticket in the host name: ${t.connectWithTicket}\n` +
          `expires ${t.expiresAt}`;
      });
      li.append(b);
    }
    ul.append(li);
  }
}

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    await api('POST', '/api/login', { user: f.get('user'), password: f.get('password') });
    await showDesktops();
  } catch (e) {
    $('login-error').textContent = e.message;
  }
});
$('logout').addEventListener('click', async () => {
  await api('POST', '/api/logout').catch(() => {});
  location.reload();
});
showDesktops().catch(() => {});
