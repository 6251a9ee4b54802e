// ---------------------------------------------------------------------------------------
// NeuroNova's own parts of the viewer (issue 16, item 8). packaging/fetch_ohif.py appends
// this file to app-config.js as it is: the viewer's CSP runs scripts from this origin only
// and no inline script, and app-config.js is loaded before OHIF's bundle, so everything
// below is in place before OHIF makes its first request.
//
// - The header shows NeuroNova's logo and name (OHIF's white-labelling,
//   window.config.whiteLabeling.createLogoComponentFn), linking back to the worklist, and
//   the signed-in user (GET /api/auth/me) with a Sign out button (POST /api/auth/logout,
//   then the login page), as the main app does.
// - A request to /api/ that is answered 401 means the session cookie no longer opens
//   anything: the access token expired while the computer slept (the refresh cookie then
//   renews it once, and a fetch() is replayed), or the session ended (signed out in another
//   tab, revoked by an admin, 12 hours over). Then a dialog covers the viewer, instead of a
//   grid of broken images, and leads to the login page, which comes back here (`next`).
//   OHIF's DICOMweb client and cornerstone's frame loader use XMLHttpRequest; cornerstone's
//   streaming and byte-range loaders use fetch(): both are watched.
// ---------------------------------------------------------------------------------------
(function neuronovaViewer() {
  'use strict';

  var WORKLIST_URL = '/';
  var LOGIN_URL = '/login';
  var FAVICON_URL = '/favicon.svg';
  var ME_URL = '/api/auth/me';
  var CHECK_URL = '/api/auth/check';
  var REFRESH_URL = '/api/auth/refresh';
  var LOGOUT_URL = '/api/auth/logout';
  // A 401 from these says nothing about the open session (or is handled where it is made).
  var NOT_WATCHED = [REFRESH_URL, LOGOUT_URL, '/api/auth/login'];
  var CSRF_COOKIE = 'nn_csrf';
  var CSRF_HEADER = 'X-CSRF-Token';
  var BRAND_BLUE = '#0f4c81';
  var ROLE_LABEL = {
    admin: 'Administrator',
    radiologist: 'Radiologist',
    technologist: 'Technologist',
  };
  // A 401 that comes this soon after a successful renewal was a request sent before it.
  var RENEWAL_REUSE_MS = 5000;
  // Coming back to the tab after this long asks the session check at once.
  var VISIBLE_CHECK_MS = 60000;

  var config = window.config || (window.config = {});
  var state = { user: null, ended: false, renewal: null, listeners: [], lastCheck: Date.now() };
  var nativeFetch = typeof window.fetch === 'function' ? window.fetch.bind(window) : null;

  // ------------------------------------------------------------------ the user

  function setUser(user) {
    state.user = user;
    state.listeners.slice().forEach(function (listener) {
      listener(user);
    });
  }

  function subscribe(listener) {
    state.listeners.push(listener);
    return function unsubscribe() {
      state.listeners = state.listeners.filter(function (l) {
        return l !== listener;
      });
    };
  }

  // A share link's cookie opens one study for someone without an account: no sign out.
  function isShare(user) {
    return !!user && (user.role === 'share' || typeof user.study_uid === 'string');
  }

  function readCookie(name) {
    var parts = (document.cookie || '').split(';');
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf('=');
      if (eq > 0 && parts[i].slice(0, eq).trim() === name) {
        var raw = parts[i].slice(eq + 1).trim();
        try {
          return decodeURIComponent(raw);
        } catch (e) {
          return raw;
        }
      }
    }
    return null;
  }

  // A same-origin POST carrying the session's CSRF token (the readable nn_csrf cookie).
  function post(url) {
    var request = new Request(url, { method: 'POST', credentials: 'same-origin', cache: 'no-store' });
    var csrf = readCookie(CSRF_COOKIE);
    if (csrf) request.headers.set(CSRF_HEADER, csrf);
    return nativeFetch(request);
  }

  function loadUser() {
    window
      .fetch(ME_URL, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (body) {
        if (body && typeof body.username === 'string') setUser(body);
      })
      .catch(function () {
        return undefined;
      });
  }

  function signOut() {
    state.ended = true; // what follows is no lost session: no dialog
    post(LOGOUT_URL)
      .catch(function () {
        return undefined; // the session may be gone already; the login page is next anyway
      })
      .then(function () {
        window.location.assign(LOGIN_URL);
      });
  }

  // ------------------------------------------------------------------ the header

  var brand = null;

  // OHIF calls createLogoComponentFn(React, props) at every render of its header: the
  // component type is made once, so React keeps its state between renders.
  function brandComponent(React) {
    if (brand) return brand;
    var h = React.createElement;
    var text = { color: '#e6edf3', fontFamily: 'inherit', lineHeight: '1.15', whiteSpace: 'nowrap' };

    function Logo() {
      return h(
        'svg',
        { viewBox: '0 0 32 32', width: 26, height: 26, 'aria-hidden': 'true', focusable: 'false' },
        h('rect', { width: 32, height: 32, rx: 7, fill: BRAND_BLUE }),
        h('path', { d: 'M9 23V9h2.6l7.8 9.6V9H22v14h-2.6L11.6 13.4V23z', fill: '#fff' })
      );
    }

    function UserBox(props) {
      var user = props.user;
      var share = isShare(user);
      return h(
        'div',
        {
          'data-testid': 'nn-userbox',
          style: {
            display: 'flex',
            flexDirection: 'column',
            justifyContent: 'center',
            marginLeft: '12px',
            paddingLeft: '12px',
            borderLeft: '1px solid rgba(255,255,255,0.25)',
            maxWidth: '110px',
          },
        },
        h(
          'span',
          {
            'data-testid': 'nn-user',
            title: share ? 'Opened with a share link' : user.username + ' (' + (ROLE_LABEL[user.role] || user.role) + ')',
            style: Object.assign({}, text, { fontSize: '12px', overflow: 'hidden', textOverflow: 'ellipsis' }),
          },
          share ? 'Shared study' : user.username
        ),
        share
          ? null
          : h(
              'button',
              {
                type: 'button',
                'data-testid': 'nn-sign-out',
                onClick: function (event) {
                  event.stopPropagation();
                  signOut();
                },
                style: {
                  background: 'none',
                  border: 0,
                  padding: 0,
                  margin: 0,
                  cursor: 'pointer',
                  color: '#7cc4ff',
                  fontSize: '11px',
                  textAlign: 'left',
                  textDecoration: 'underline',
                },
              },
              'Sign out'
            )
      );
    }

    brand = function NeuroNovaBrand() {
      var pair = React.useState(state.user);
      var user = pair[0];
      var setLocalUser = pair[1];
      React.useEffect(function () {
        setLocalUser(state.user);
        return subscribe(setLocalUser);
      }, []);
      return h(
        'div',
        { 'data-testid': 'nn-brand', style: { display: 'flex', alignItems: 'center', height: '40px' } },
        h(
          'a',
          {
            href: WORKLIST_URL,
            title: 'Back to the worklist',
            'aria-label': 'NeuroNova: back to the worklist',
            'data-testid': 'nn-worklist-link',
            onClick: function (event) {
              event.stopPropagation();
            },
            style: { display: 'flex', alignItems: 'center', gap: '8px', textDecoration: 'none' },
          },
          h(Logo),
          h('span', { style: Object.assign({}, text, { fontSize: '16px', fontWeight: 600 }) }, 'NeuroNova')
        ),
        user ? h(UserBox, { user: user }) : null
      );
    };
    return brand;
  }

  config.whiteLabeling = {
    createLogoComponentFn: function (React) {
      return React.createElement(brandComponent(React));
    },
  };

  if (typeof document === 'undefined' || !nativeFetch) return; // evaluated outside a browser

  // ------------------------------------------------------------------ session ended

  function loginUrlBack() {
    var here = window.location.pathname + window.location.search + window.location.hash;
    return LOGIN_URL + '?next=' + encodeURIComponent(here);
  }

  function element(tag, style, text) {
    var node = document.createElement(tag);
    Object.assign(node.style, style || {});
    if (text) node.textContent = text;
    return node;
  }

  function showSessionEnded() {
    if (document.getElementById('nn-session-ended')) return;
    state.ended = true;
    var backdrop = element('div', {
      position: 'fixed',
      inset: '0',
      zIndex: '2147483000',
      background: 'rgba(4, 8, 16, 0.94)',
      display: 'flex',
      alignItems: 'center',
      justifyContent: 'center',
      fontFamily: 'Inter, system-ui, sans-serif',
    });
    backdrop.id = 'nn-session-ended';
    backdrop.setAttribute('data-testid', 'nn-session-ended');
    backdrop.setAttribute('role', 'alertdialog');
    backdrop.setAttribute('aria-modal', 'true');
    backdrop.setAttribute('aria-labelledby', 'nn-session-ended-title');
    backdrop.setAttribute('aria-describedby', 'nn-session-ended-text');
    var card = element('div', {
      background: '#0b1a2e',
      color: '#e6edf3',
      border: '1px solid #24406a',
      borderRadius: '10px',
      padding: '28px 32px',
      maxWidth: '420px',
      boxShadow: '0 12px 40px rgba(0,0,0,0.6)',
    });
    var share = isShare(state.user);
    var title = element(
      'h2',
      { margin: '0 0 12px', fontSize: '20px', fontWeight: '600' },
      share ? 'This shared study is no longer open' : 'Your session has ended'
    );
    title.id = 'nn-session-ended-title';
    var text = element(
      'p',
      { margin: '0 0 24px', fontSize: '14px', lineHeight: '1.5', color: '#c3cfdc' },
      share
        ? 'The share link has expired or was withdrawn: ask whoever sent it for a new one. ' +
            'Staff of the clinic can sign in to open the study.'
        : 'You were signed out, or your sign-in expired. Sign in again to go on: ' +
            'you will come back to this study.'
    );
    text.id = 'nn-session-ended-text';
    var link = element(
      'a',
      {
        display: 'inline-block',
        background: BRAND_BLUE,
        color: '#fff',
        padding: '9px 18px',
        borderRadius: '6px',
        fontSize: '14px',
        fontWeight: '600',
        textDecoration: 'none',
      },
      share ? 'Sign in' : 'Sign in again'
    );
    link.href = loginUrlBack();
    link.setAttribute('data-testid', 'nn-session-ended-login');
    var worklist = element(
      'a',
      { marginLeft: '16px', color: '#7cc4ff', fontSize: '14px' },
      'Worklist'
    );
    worklist.href = WORKLIST_URL;
    card.appendChild(title);
    card.appendChild(text);
    card.appendChild(link);
    if (!share) card.appendChild(worklist);
    backdrop.appendChild(card);
    document.body.appendChild(backdrop);
    link.focus();
    console.warn('NeuroNova viewer: the session has ended; sign in again');
  }

  // One renewal at a time: the refresh cookie (path /api/auth) swaps for a new session
  // cookie, or the session is over. Resolves to whether requests may be made again.
  function sessionLost() {
    if (state.ended) return Promise.resolve(false);
    if (!state.renewal) {
      var renewal = (readCookie(CSRF_COOKIE) ? post(REFRESH_URL) : Promise.reject(new Error('signed out')))
        .then(
          function (response) {
            return response.ok;
          },
          function () {
            return false;
          }
        )
        .then(function (renewed) {
          if (!renewed) {
            showSessionEnded();
          } else {
            console.info('NeuroNova viewer: the session cookie was renewed');
          }
          window.setTimeout(function () {
            if (state.renewal === renewal) state.renewal = null;
          }, renewed ? RENEWAL_REUSE_MS : 0);
          return renewed;
        });
      state.renewal = renewal;
    }
    return state.renewal;
  }

  function watched(url) {
    var parsed;
    try {
      parsed = new URL(url, window.location.href);
    } catch (e) {
      return false;
    }
    return (
      parsed.origin === window.location.origin &&
      parsed.pathname.indexOf('/api/') === 0 &&
      NOT_WATCHED.indexOf(parsed.pathname) < 0
    );
  }

  // fetch(): a 401 waits for the renewal; a GET is then made once more, transparently.
  window.fetch = function neuronovaFetch(input, init) {
    var url = typeof input === 'string' ? input : input && (input.url || String(input));
    var method = String((init && init.method) || (input && input.method) || 'GET').toUpperCase();
    var answer = nativeFetch(input, init);
    if (!watched(url)) return answer;
    return answer.then(function (response) {
      if (response.status !== 401) return response;
      return sessionLost().then(function (renewed) {
        return renewed && (method === 'GET' || method === 'HEAD') ? nativeFetch(input, init) : response;
      });
    });
  };

  // XMLHttpRequest: OHIF already has the 401 by the time it is seen here, so the failed
  // request stays failed, but the next one carries the renewed cookie or the dialog shows.
  var XHR = window.XMLHttpRequest;
  if (XHR && XHR.prototype) {
    var open = XHR.prototype.open;
    var send = XHR.prototype.send;
    var onLoadEnd = function () {
      if (this.status === 401) sessionLost();
    };
    XHR.prototype.open = function (method, url) {
      this.neuronovaWatched = watched(String(url));
      return open.apply(this, arguments);
    };
    XHR.prototype.send = function () {
      if (this.neuronovaWatched) this.addEventListener('loadend', onLoadEnd);
      return send.apply(this, arguments);
    };
  }

  // Back to the tab after a while (or after the computer slept): ask at once whether the
  // session still opens anything, before OHIF's next request finds out.
  function checkSession() {
    state.lastCheck = Date.now();
    window.fetch(CHECK_URL, { credentials: 'same-origin', cache: 'no-store' }).catch(function () {
      return undefined;
    });
  }
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible' && Date.now() - state.lastCheck > VISIBLE_CHECK_MS) {
      checkSession();
    }
  });

  // The tab: NeuroNova's name and icon (the main app's), not OHIF's.
  window.addEventListener('DOMContentLoaded', function () {
    document.title = 'NeuroNova viewer';
    Array.prototype.forEach.call(document.querySelectorAll('link[rel~="icon"]'), function (link) {
      link.remove();
    });
    var icon = document.createElement('link');
    icon.rel = 'icon';
    icon.type = 'image/svg+xml';
    icon.href = FAVICON_URL;
    document.head.appendChild(icon);
  });
  loadUser();
})();
