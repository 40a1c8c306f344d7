// The in-browser viewer: /viewer.html?vm=<vm>&protocol=vnc|spice. Each attempt asks the API for
// a fresh single-use console ticket, opens the WebSocket tunnel (CONTRACT section 4) and hands
// it to noVNC or spice-html5. When the connection drops it reconnects by itself (reconnect.js:
// jittered backoff, a cap, a budget), and the status line says what is going on.
import { Reconnector } from './reconnect.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const vm = params.get('vm') ?? '';
const protocol = params.get('protocol') ?? 'vnc';
const screen = $('screen');
const statusEl = $('status');

// Close codes after which retrying cannot help (CONTRACT section 4).
const FATAL_CLOSE = new Map([
  [4003, 'not allowed'],
  [4004, 'unknown desktop or protocol'],
  [1008, 'refused by the gateway'],
]);

/** The live connection, whatever the protocol: just enough to end it. */
let current;

function setStatus(text, state) {
  statusEl.textContent = text;
  statusEl.dataset.state = state;
  document.body.dataset.state = state;
  $('reconnect').hidden = state !== 'stopped' && state !== 'waiting';
  $('reconnect').textContent = state === 'waiting' ? 'Retry now' : 'Reconnect';
  $('disconnect').hidden = state === 'stopped';
  $('cad').hidden = state !== 'connected';
}

const reconnector = new Reconnector(attempt, (s) => {
  switch (s.state) {
    case 'connecting':
      return setStatus(s.attempt > 1 ? `Reconnecting (attempt ${s.attempt} of ${s.maxAttempts})…` : 'Connecting…', 'connecting');
    case 'connected':
      return setStatus('Connected', 'connected');
    case 'waiting':
      return setStatus(`${s.reason ? `${s.reason}. ` : ''}Reconnecting in ${Math.ceil((s.delayMs ?? 0) / 1000)} s…`, 'waiting');
    case 'stopped':
      return setStatus(`Disconnected${s.reason ? `: ${s.reason}` : ''}`, 'stopped');
    default:
      return setStatus('', s.state);
  }
});

class FatalError extends Error {}

async function freshTicket() {
  let res;
  try {
    res = await fetch(`/api/desktops/${encodeURIComponent(vm)}/tickets`, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ protocol }),
    });
  } catch {
    throw new Error('the gateway cannot be reached');
  }
  const body = await res.json().catch(() => ({}));
  if (res.ok) return body;
  const message = body.error?.message ?? `HTTP ${res.status}`;
  // Logged out, not assigned, no such desktop: waiting will not change that.
  if (res.status === 401) throw new FatalError('your session has ended; log in again');
  if (res.status === 403 || res.status === 404 || res.status === 400) throw new FatalError(message);
  throw new Error(message);
}

function endCurrent() {
  const c = current;
  current = undefined;
  c?.end();
}

async function attempt() {
  endCurrent();
  let ticket;
  try {
    ticket = await freshTicket();
  } catch (e) {
    return reconnector.lost({ fatal: e instanceof FatalError, reason: e.message });
  }
  // The user may have pressed Disconnect while the ticket was on its way.
  if (reconnector.state !== 'connecting') return;
  const url = `wss://${location.host}${ticket.websocket}`;
  try {
    current = protocol === 'spice' ? await openSpice(url) : await openVnc(url);
  } catch (e) {
    reconnector.lost({ fatal: e instanceof FatalError, reason: e.message });
  }
}

/** noVNC (ES modules from @novnc/novnc, served by the gateway under /vendor/novnc/). */
async function openVnc(url) {
  let RFB;
  try {
    ({ default: RFB } = await import('/vendor/novnc/core/rfb.js'));
  } catch {
    throw new FatalError('the VNC client (noVNC) is not installed on the gateway');
  }
  // We open the WebSocket ourselves to see its close code, which noVNC does not report.
  const ws = new WebSocket(url, ['binary']);
  ws.binaryType = 'arraybuffer';
  let close;
  ws.addEventListener('close', (e) => (close = e));
  const rfb = new RFB(screen, ws);
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = '#1d2330';
  let ended = false;
  const conn = {
    end() {
      ended = true;
      rfb.disconnect();
    },
    ctrlAltDel: () => rfb.sendCtrlAltDel(),
  };
  rfb.addEventListener('connect', () => {
    if (!ended) reconnector.connected();
  });
  rfb.addEventListener('securityfailure', (e) => {
    if (ended) return;
    ended = true;
    reconnector.lost({ fatal: true, reason: `the desktop refused the connection${e.detail?.reason ? ` (${e.detail.reason})` : ''}` });
  });
  rfb.addEventListener('credentialsrequired', () => {
    // oneport authenticates the user; a VNC password on the console itself is not supported here.
    ended = true;
    rfb.disconnect();
    reconnector.lost({ fatal: true, reason: 'the desktop asks for a VNC password' });
  });
  rfb.addEventListener('disconnect', () => {
    if (ended) return;
    ended = true;
    if (current === conn) current = undefined;
    reconnector.lost(closeInfo(close));
  });
  return conn;
}

/** spice-html5 (ES modules from @spice-project/spice-html5 under /vendor/spice-html5/). */
async function openSpice(url) {
  let Spice;
  try {
    Spice = await import('/vendor/spice-html5/src/main.js');
  } catch {
    throw new FatalError('the SPICE client (spice-html5) is not installed on the gateway');
  }
  let ended = false;
  let sc;
  const conn = {
    end() {
      ended = true;
      try {
        sc?.stop();
      } catch {
        /* already down */
      }
      screen.replaceChildren();
    },
    ctrlAltDel: () => sc && Spice.sendCtrlAltDel(sc),
  };
  const onResize = () => sc && Spice.handle_resize();
  screen.replaceChildren();
  sc = new Spice.SpiceMainConn({
    uri: url,
    password: '',
    screen_id: 'screen',
    onsuccess: () => {
      if (!ended) reconnector.connected();
    },
    onerror: (e) => {
      if (ended) return;
      conn.end();
      window.removeEventListener('resize', onResize);
      if (current === conn) current = undefined;
      reconnector.lost({ reason: e?.message ?? 'connection lost' });
    },
  });
  window.addEventListener('resize', onResize);
  return conn;
}

function closeInfo(e) {
  if (!e) return { reason: 'connection lost' };
  const fatal = FATAL_CLOSE.get(e.code);
  if (fatal) return { fatal: true, reason: e.reason || fatal };
  if (e.code === 4001) {
    // Reroute: the VM moved; come back now, or after the delay the gateway asks for.
    let retryMs = 0;
    try {
      retryMs = Math.max(0, Math.min(30_000, Number(JSON.parse(e.reason).retryMs) || 0));
    } catch {
      /* no hint */
    }
    return { retryMs, reason: 'the desktop moved' };
  }
  const reasons = { 1000: 'the desktop closed the connection', 1001: 'the gateway is restarting', 1006: 'connection lost', 4401: 'ticket refused', 4502: 'the desktop does not answer', 4503: 'the desktop is recovering' };
  return { reason: reasons[e.code] ?? (e.reason || `closed (${e.code})`) };
}

$('reconnect').addEventListener('click', () => (reconnector.state === 'waiting' ? reconnector.retryNow() : reconnector.start()));
$('disconnect').addEventListener('click', () => {
  endCurrent();
  reconnector.stop('you disconnected');
});
$('cad').addEventListener('click', () => current?.ctrlAltDel());
// Back online: no point waiting out the backoff.
window.addEventListener('online', () => reconnector.retryNow());

if (!vm || !['vnc', 'spice'].includes(protocol)) {
  setStatus('No desktop given: open one from the list of desktops.', 'stopped');
} else {
  document.title = `${vm} (${protocol}) · oneport`;
  $('title').textContent = `${vm} · ${protocol.toUpperCase()}`;
  reconnector.start();
}
