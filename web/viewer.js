// The in-browser viewer: /viewer.html?vm=<vm>&protocol=vnc|spice|rdp. The first attempt asks the
// API for a single-use console ticket, opens the WebSocket tunnel (CONTRACT section 4) and hands it
// to noVNC or spice-html5; for RDP, IronRDP (rdp.js) opens the RDCleanPath entrance with the ticket
// and the Windows credentials the user types here. When the connection drops it reconnects by itself (reconnect.js: jittered
// backoff, a cap, a budget), with the resume token of the last ticket answer while it is valid
// (no new ticket, no session cookie needed: a failover or a gateway restart does not depend on the
// portal session), falling back to a fresh ticket when the gateway refuses the resume (4401). The
// status line says what is going on.
import { Reconnector, ResumeToken } from './reconnect.js';
import { OneportChannel } from './oneport-channel.js';
import { openRdp } from './rdp.js';

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
  [4008, 'the maximum session time is over'],
  [4429, 'too many sessions open; close one first'],
  // The console handshake (README "Error codes"): retrying cannot help until an admin acts.
  [4511, 'the desktop refused the console password the gateway holds for it; ask an administrator to update it'],
  [4400, 'the gateway refused this client: it did not speak the desktop\'s protocol'],
  [1008, 'refused by the gateway'],
]);
/** What spice-html5 reports when the console refuses the ticket (it gives no close code). */
const SPICE_DENIED = 'Permission denied.';

/** The live connection, whatever the protocol: just enough to end it. */
let current;
/** The resume token of the last ticket answer. */
const resumeToken = new ResumeToken();
/** The next attempt gets a fresh ticket even with a resume token at hand. */
let ticketNext = false;

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
      return setStatus(s.reconnecting || s.attempt > 1 ? `Reconnecting (attempt ${s.attempt} of ${s.maxAttempts})…` : 'Connecting…', 'connecting');
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

async function attempt({ reconnecting }) {
  endCurrent();
  // A reconnect goes back with the resume token; the first connection, a user's Reconnect, or a
  // token refused or about to expire get a fresh ticket.
  const viaResume = reconnecting && !ticketNext && resumeToken.usable();
  ticketNext = false;
  let ticket;
  if (!viaResume) {
    try {
      ticket = await freshTicket();
    } catch (e) {
      return reconnector.lost({ fatal: e instanceof FatalError, reason: e.message });
    }
    resumeToken.remember(ticket);
  }
  // The user may have pressed Disconnect while the ticket was on its way.
  if (reconnector.state !== 'connecting') return;
  // How a connection made with the resume token ended: 4401 is a refused token; get a ticket now.
  // Without a close code (spice-html5 reports none), a resume that never got through is not
  // tried twice in a row: the next attempt gets a ticket (and with it a fresh resume token).
  const ended = (info, code, opened) => {
    if (!viaResume) return info;
    if (resumeToken.refused(code)) return { retryMs: 0, reason: 'resume refused, getting a new ticket' };
    if (code === undefined && !opened) ticketNext = true;
    return info;
  };
  try {
    if (protocol === 'rdp') {
      // RDCleanPath carries the ticket (or its resume token) inside its request, not in the URL.
      current = await openRdpDesktop(viaResume ? resumeToken.token : ticket.ticket, ended);
    } else {
      const url = `wss://${location.host}${viaResume ? resumeToken.path(vm, protocol) : ticket.websocket}`;
      current = protocol === 'spice' ? await openSpice(url, ended) : await openVnc(url, ended);
    }
  } catch (e) {
    reconnector.lost({ fatal: e instanceof FatalError, reason: e.message });
  }
}

/** The Windows credentials for RDP: typed into the form, kept in this page's memory only. */
let rdpCredentials;

function askRdpCredentials(message = '') {
  const form = $('rdp-login');
  form.hidden = false;
  $('rdp-login-error').textContent = message;
  form.querySelector(rdpCredentials ? 'input[name=password]' : 'input[name=user]').focus();
}

$('rdp-login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const typed = String(f.get('user') ?? '').trim();
  // DOMAIN\user, as Windows writes it.
  const m = /^([^\\]+)\\(.+)$/.exec(typed);
  rdpCredentials = { user: m ? m[2] : typed, domain: m ? m[1] : '', password: String(f.get('password') ?? '') };
  ev.target.querySelector('input[name=password]').value = '';
  ev.target.hidden = true;
  reconnector.start();
});

/** IronRDP (rdp.js) over the gateway's RDCleanPath entrance. */
async function openRdpDesktop(token, ended) {
  let over = false;
  let opened = false;
  let inner;
  const conn = {
    end() {
      over = true;
      inner?.end();
    },
    ctrlAltDel: () => inner?.ctrlAltDel(),
  };
  try {
    inner = await openRdp(screen, {
      url: `wss://${location.host}/rdcleanpath/${encodeURIComponent(vm)}`,
      token,
      vm,
      ...rdpCredentials,
      onConnected: () => {
        opened = true;
        if (!over) reconnector.connected();
      },
      onEnd: ({ close, error }) => {
        if (over) return;
        over = true;
        if (current === conn) current = undefined;
        if (error?.credentials) {
          reconnector.stop(error.reason);
          return askRdpCredentials(`${error.reason}.`);
        }
        if (error?.fatal) return reconnector.lost({ fatal: true, reason: error.reason });
        // The gateway's close code says most (4401, 4001, 4502...); else what IronRDP said.
        const info = close && close.code !== 1006 && close.code !== 1005 ? closeInfo(close) : { reason: error?.reason ?? 'connection lost' };
        reconnector.lost(ended(info, close?.code, opened));
      },
    });
  } catch {
    throw new FatalError('the RDP client (IronRDP) is not installed on the gateway');
  }
  if (over) inner.end();
  return conn;
}

/** noVNC (ES modules from @novnc/novnc, served by the gateway under /vendor/novnc/). */
async function openVnc(url, ended) {
  let RFB;
  try {
    ({ default: RFB } = await import('/vendor/novnc/core/rfb.js'));
  } catch {
    throw new FatalError('the VNC client (noVNC) is not installed on the gateway');
  }
  // We open the tunnel ourselves to see its close code, which noVNC does not report. With a resume
  // token at hand it is a oneport.v1 channel: a dropped leg (Wi-Fi to LTE, a laptop lid) is
  // resumed underneath noVNC, which keeps its desktop; only a real end reaches the reconnector.
  const ws = resumeToken.usable()
    ? new OneportChannel(url, {
        resume: /** @type {string} */ (resumeToken.token),
        onStatus: (st) => {
          if (st.state === 'resuming') setStatus('Connection lost; resuming the session…', 'resuming');
          else if (st.state === 'resumed') setStatus('Connected', 'connected');
        },
      })
    : new WebSocket(url, ['binary']);
  ws.binaryType = 'arraybuffer';
  let close;
  ws.addEventListener('close', (e) => (close = e));
  const rfb = new RFB(screen, ws);
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = '#1d2330';
  let over = false;
  let opened = false;
  const conn = {
    end() {
      over = true;
      rfb.disconnect();
    },
    ctrlAltDel: () => rfb.sendCtrlAltDel(),
  };
  rfb.addEventListener('connect', () => {
    opened = true;
    if (!over) reconnector.connected();
  });
  rfb.addEventListener('securityfailure', (e) => {
    if (over) return;
    over = true;
    reconnector.lost({ fatal: true, reason: `the desktop refused the connection${e.detail?.reason ? ` (${e.detail.reason})` : ''}` });
  });
  rfb.addEventListener('credentialsrequired', () => {
    // oneport authenticates the user; a VNC password on the console itself is not supported here.
    over = true;
    rfb.disconnect();
    reconnector.lost({ fatal: true, reason: 'the desktop asks for a VNC password' });
  });
  rfb.addEventListener('disconnect', () => {
    if (over) return;
    over = true;
    if (current === conn) current = undefined;
    reconnector.lost(ended(closeInfo(close), close?.code, opened));
  });
  return conn;
}

/** spice-html5 (ES modules from @spice-project/spice-html5 under /vendor/spice-html5/). */
async function openSpice(url, ended) {
  let Spice;
  try {
    Spice = await import('/vendor/spice-html5/src/main.js');
  } catch {
    throw new FatalError('the SPICE client (spice-html5) is not installed on the gateway');
  }
  let over = false;
  let opened = false;
  let sc;
  const conn = {
    end() {
      over = true;
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
      opened = true;
      if (!over) reconnector.connected();
    },
    onerror: (e) => {
      if (over) return;
      conn.end();
      window.removeEventListener('resize', onResize);
      if (current === conn) current = undefined;
      // spice-html5 reports no close code; a refused resume token shows as an error like any other.
      // A refused ticket is the console's password, which the gateway supplies: retrying cannot help.
      if (e?.message === SPICE_DENIED) return reconnector.lost({ fatal: true, reason: FATAL_CLOSE.get(4511) });
      reconnector.lost(ended({ reason: e?.message ?? 'connection lost' }, undefined, opened));
    },
  });
  window.addEventListener('resize', onResize);
  return conn;
}

function closeInfo(e) {
  if (!e) return { reason: 'connection lost' };
  const fatal = FATAL_CLOSE.get(e.code);
  // Some reasons are for programs (JSON: 4003 revoked, 4008; a bare ONEPORT_ERR_ code): the words are for people.
  if (fatal) return { fatal: true, reason: e.reason && !/^(\{|ONEPORT_ERR_)/.test(e.reason) ? e.reason : fatal };
  if (e.code === 4001) {
    // Reroute: the VM moved; come back now, or after the delay the gateway asks for.
    let retryMs = 0;
    let node;
    try {
      const hint = JSON.parse(e.reason);
      retryMs = Math.max(0, Math.min(30_000, Number(hint.retryMs) || 0));
      if (typeof hint.node === 'string' && /^[A-Za-z0-9._-]{1,63}$/.test(hint.node)) node = hint.node;
    } catch {
      /* no hint */
    }
    return { retryMs, reason: node ? `the desktop moved to node ${node}` : 'the desktop moved' };
  }
  if (e.code === 1013) {
    // A cap on resumable sessions (README "Transparent resume"), or too many attempts: try again
    // with the usual backoff, or after the wait the gateway asks for.
    let code = e.reason;
    let retryMs;
    try {
      const hint = JSON.parse(e.reason);
      code = hint.code;
      if (hint.retryMs !== undefined) retryMs = Math.max(0, Math.min(30_000, Number(hint.retryMs) || 0));
    } catch {
      /* a bare code */
    }
    const text = code === 'ONEPORT_ERR_RESUME_LIMIT' ? 'you have as many desktop sessions open as you may; close one' : code === 'ONEPORT_ERR_RESUME_BUSY' ? 'the gateway is busy' : 'too many attempts';
    return retryMs === undefined ? { reason: text } : { retryMs, reason: text };
  }
  const reasons = { 1000: 'the desktop closed the connection', 1001: 'the gateway is restarting', 1006: 'connection lost', 4401: 'ticket refused', 4502: 'the desktop does not answer', 4503: 'the desktop is recovering', 4512: 'the desktop does not speak its protocol (yet)' };
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

if (!vm || !['vnc', 'spice', 'rdp'].includes(protocol)) {
  setStatus('No desktop given: open one from the list of desktops.', 'stopped');
} else {
  document.title = `${vm} (${protocol}) · oneport`;
  $('title').textContent = `${vm} · ${protocol.toUpperCase()}`;
  if (protocol === 'rdp') {
    setStatus('Windows credentials needed', 'idle');
    askRdpCredentials();
  } else reconnector.start();
}
