// The portal: log in, list the user's desktops with their state, and per desktop and protocol
// the ways in: the in-browser viewer (VNC, SPICE, RDP), .vv files for remote-viewer (SPICE), and
// for RDP .rdp files for stock clients (through the RD Gateway on this port, or, where the desktop
// allows it, native RDP straight to the port) and the FreeRDP command line (a fresh single-use
// ticket riding in the host name, CONTRACT section 3). Plain DOM, no framework; text only through
// textContent.
const $ = (id) => document.getElementById(id);

const STATE_TEXT = { running: 'running', recovering: 'recovering', migrating: 'moving', down: 'down' };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, data.error ? data.error.message : `HTTP ${res.status}`);
  return data;
}

function el(tag, attrs = {}, text = '') {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

function showLogin(message = '') {
  $('desktops-view').hidden = true;
  $('login-view').hidden = false;
  $('login-error').textContent = message;
  document.querySelector('#login input[name=user]').focus();
}

function showDetail(li, title, command, hint) {
  const d = li.querySelector('.detail');
  d.hidden = false;
  d.querySelector('.detail-title').textContent = title;
  d.querySelector('.command').textContent = command;
  d.querySelector('.hint').textContent = hint;
  const copy = d.querySelector('.copy');
  copy.textContent = 'Copy';
  copy.onclick = async () => {
    try {
      await navigator.clipboard.writeText(command);
      copy.textContent = 'Copied';
    } catch {
      copy.textContent = 'Select and copy by hand';
    }
  };
}

function secondsLeft(expiresAt) {
  return Math.max(0, Math.round((Date.parse(expiresAt) - Date.now()) / 1000));
}

function protocolActions(li, d, p) {
  const vm = encodeURIComponent(d.vm);
  const group = el('div', { class: 'protocol', 'data-protocol': p });
  group.append(el('span', { class: 'protocol-name' }, p.toUpperCase()));
  if (p === 'vnc' || p === 'spice') {
    group.append(el('a', { class: 'button open', href: `/viewer.html?vm=${vm}&protocol=${p}` }, 'Open in browser'));
  }
  // remote-viewer ignores the proxy for VNC (it would look the ticket up in DNS): .vv for SPICE only.
  if (p === 'spice') {
    // A GET with the session cookie: the gateway answers with a file holding a fresh ticket.
    group.append(el('a', {
      class: 'button vv',
      href: `/api/desktops/${vm}/console.vv?protocol=spice&proxy=https`,
      download: `${d.vm}.vv`,
      title: 'remote-viewer speaks TLS to this gateway: pick this if your computer trusts its certificate (no browser warning here, or you installed the gateway CA)',
    }, 'Download .vv (TLS)'));
    group.append(el('a', {
      class: 'button vv vv-plain',
      href: `/api/desktops/${vm}/console.vv?protocol=spice&proxy=http`,
      download: `${d.vm}.vv`,
      title: 'works without trusting the gateway certificate; the single-use ticket crosses the network in clear text',
    }, 'Download .vv (plain)'));
  }
  if (p === 'rdp') {
    group.append(el('a', { class: 'button open', href: `/viewer.html?vm=${vm}&protocol=rdp` }, 'Open in browser'));
    // GETs with the session cookie: each file holds a fresh ticket (open it within a minute).
    group.append(el('a', { class: 'button rdp-file', href: `/api/desktops/${vm}/console.rdp?variant=gateway`, download: `${d.vm}.rdp`, title: 'mstsc, the Remote Desktop apps, thin clients: through the RD Gateway on this port' }, 'Download .rdp'));
    if (d.nativeRdp) {
      group.append(el('a', { class: 'button rdp-native', href: `/api/desktops/${vm}/console.rdp?variant=native`, download: `${d.vm}-native.rdp`, title: 'For clients without RD Gateway support: straight to this port (the ticket travels before TLS)' }, 'Download .rdp (direct)'));
    }
    const b = el('button', { type: 'button', class: 'freerdp' }, 'FreeRDP command');
    b.addEventListener('click', async () => {
      try {
        const t = await api('POST', `/api/desktops/${vm}/tickets`, { protocol: 'rdp' });
        // FreeRDP 2 sends no proxy credentials and cannot speak TLS to a proxy: the ticket
        // rides in the host name and the proxy is this port in clear text.
        // Nothing in it a shell would read as syntax (no <, >, quotes): safe to paste as it is.
        // FreeRDP asks for the Windows user and password itself; /cert:tofu trusts the desktop's
        // self-signed certificate the first time and warns if it ever changes.
        const cmd = `xfreerdp /v:${t.connectWithTicket} /proxy:http://${location.host} /cert:tofu`;
        showDetail(li, 'Run this within the next minute:', cmd, `FreeRDP asks for your Windows user and password (or add /u:NAME). The ticket opens one console session: unused, it expires in ${secondsLeft(t.expiresAt)} s; once used, it lets in only that session's own further connections from this computer (a retry of FreeRDP's), while one of them is open or within 2 s of the last one closing, and never later than 10 s after the first. Get a new command for each connection.`);
      } catch (e) {
        handleError(e);
      }
    });
    group.append(b);
  }
  return group;
}

function handleError(e) {
  if (e instanceof ApiError && e.status === 401) return showLogin('Your session has ended. Log in again.');
  $('desktops-error').textContent = e.message;
}

async function showDesktops() {
  const me = await api('GET', '/api/me');
  const list = await api('GET', '/api/desktops');
  $('login-view').hidden = true;
  $('desktops-view').hidden = false;
  $('me').textContent = me.name;
  $('desktops-error').textContent = '';
  $('empty').hidden = list.length > 0;
  const ul = $('desktops');
  ul.replaceChildren();
  const tpl = $('desktop-tpl');
  for (const d of list) {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.vm = d.vm;
    li.querySelector('.name').textContent = d.vm;
    const state = li.querySelector('.state');
    state.textContent = STATE_TEXT[d.state] ?? d.state;
    state.dataset.state = d.state;
    const protocols = li.querySelector('.protocols');
    for (const p of d.protocols) protocols.append(protocolActions(li, d, p));
    ul.append(li);
  }
}

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const button = ev.target.querySelector('button');
  button.disabled = true;
  try {
    await api('POST', '/api/login', { user: f.get('user'), password: f.get('password') });
    ev.target.reset();
    await showDesktops();
  } catch (e) {
    $('login-error').textContent = e.status === 401 ? 'Wrong user name or password.' : e.message;
  } finally {
    button.disabled = false;
  }
});
$('logout').addEventListener('click', async () => {
  await api('POST', '/api/logout').catch(() => {});
  showLogin();
});
$('refresh').addEventListener('click', () => showDesktops().catch(handleError));

// Already logged in (the session cookie)? Then straight to the list.
showDesktops().catch((e) => (e instanceof ApiError && e.status === 401 ? showLogin() : showLogin(e.message)));
