// Component-level tests: the real App rendered into happy-dom with a fake fetch.
import { act } from 'react';
import { createRoot, type Root } from 'react-dom/client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { App } from './App';
import { backupMetric, fhirPushMetric } from './pages/AdminSystem';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

type Handler = (url: URL, init: RequestInit) => Response | undefined;

const json = (status: number, body?: unknown) =>
  new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' },
  });

let root: Root | null = null;
let container: HTMLElement;
let requests: string[] = [];

function installFetch(handler: Handler) {
  requests = [];
  vi.stubGlobal(
    'fetch',
    vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
      const url = new URL(String(input), window.location.origin);
      requests.push(`${init.method ?? 'GET'} ${url.pathname}${url.search}`);
      return handler(url, init) ?? json(404, { status: 404, error: 'not_found', message: 'nope' });
    }),
  );
}

async function render(path: string) {
  window.history.replaceState(null, '', path);
  container = document.createElement('div');
  document.body.appendChild(container);
  await act(async () => {
    root = createRoot(container);
    root.render(<App />);
  });
}

async function settle(ms = 0) {
  await act(async () => {
    await new Promise((r) => setTimeout(r, ms));
  });
}

async function waitFor<T>(fn: () => T | null | undefined | false, timeout = 2000): Promise<T> {
  const start = Date.now();
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() - start > timeout) throw new Error('waitFor timed out');
    await settle(10);
  }
}

const byTestId = (id: string) => container.querySelector<HTMLElement>(`[data-testid="${id}"]`);

function type(el: HTMLInputElement, value: string) {
  const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value')!.set!;
  setter.call(el, value);
  el.dispatchEvent(new Event('input', { bubbles: true }));
}

beforeEach(() => {
  document.body.innerHTML = '';
});

afterEach(async () => {
  await act(async () => root?.unmount());
  root = null;
  vi.unstubAllGlobals();
});

const STUDY = {
  study_uid: '1.2.840.113619.2.55.3.1',
  patient_name: 'Doe^Jane^Q',
  patient_id: 'PID-001',
  study_date: '20240315',
  modalities: ['CT'],
  description: 'CT HEAD W/O CONTRAST',
  series_count: 3,
  instance_count: 300,
  progress: { received: 300, transcoded: 299, stored: 298, failed: 2 },
  updated_at: '2024-03-15T10:00:00Z',
};

describe('login', () => {
  it('sends an anonymous user to /login with next, and shows the throttling wait', async () => {
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(401, { status: 401, error: 'no_session', message: 'x' });
      if (url.pathname === '/api/auth/refresh') return json(401, { status: 401, error: 'no_session', message: 'x' });
      if (url.pathname === '/api/auth/login')
        return json(429, { status: 429, error: 'throttled', message: 'Too many', retry_after: 42 });
    });
    await render('/admin/users');
    await waitFor(() => byTestId('login-username'));
    expect(window.location.pathname).toBe('/login');
    expect(new URLSearchParams(window.location.search).get('next')).toBe('/admin/users');
    expect(requests.slice(0, 2)).toEqual(['GET /api/auth/me', 'POST /api/auth/refresh']);

    await act(async () => {
      type(byTestId('login-username') as HTMLInputElement, 'alice');
      type(byTestId('login-password') as HTMLInputElement, 'wrong');
    });
    await act(async () => byTestId('login-submit')!.click());
    const err = await waitFor(() => byTestId('login-error'));
    expect(err.textContent).toMatch(/try again in 4[12]\s/i);
    expect((byTestId('login-submit') as HTMLButtonElement).disabled).toBe(true);
  });

  it('offers single sign-on only when the appliance has a provider', async () => {
    installFetch((url) => {
      if (url.pathname === '/api/auth/me' || url.pathname === '/api/auth/refresh') return json(401, {});
      if (url.pathname === '/api/auth/oidc') return json(200, { enabled: true, display_name: 'Keycloak' });
    });
    await render('/login?next=%2Fshares');
    const button = await waitFor(() => byTestId('login-sso'));
    expect(button.textContent).toBe('Sign in with Keycloak');
    expect(button.getAttribute('href')).toBe('/api/auth/oidc/start?next=%2Fshares');
    root?.unmount();
    container.remove();
    installFetch((url) => {
      if (url.pathname === '/api/auth/me' || url.pathname === '/api/auth/refresh') return json(401, {});
      if (url.pathname === '/api/auth/oidc') return json(200, { enabled: false, display_name: 'x' });
    });
    await render('/login');
    await waitFor(() => requests.includes('GET /api/auth/oidc'));
    await settle(20);
    expect(byTestId('login-sso')).toBeNull();
  });

  it('shows bad credentials, then signs in and goes to next', async () => {
    let attempts = 0;
    installFetch((url, init) => {
      if (url.pathname === '/api/auth/me' || url.pathname === '/api/auth/refresh') return json(401, {});
      if (url.pathname === '/api/auth/login') {
        attempts++;
        const body = JSON.parse(String(init.body));
        if (body.password !== 'right') return json(401, { status: 401, error: 'bad_credentials', message: 'Invalid' });
        return json(200, { access_token: 't', expires_in: 900, user: { username: 'alice', role: 'admin' } });
      }
      if (url.pathname === '/api/shares') return json(200, { items: [] });
    });
    await render('/login?next=%2Fshares');
    await waitFor(() => byTestId('login-username'));
    await act(async () => {
      type(byTestId('login-username') as HTMLInputElement, 'alice');
      type(byTestId('login-password') as HTMLInputElement, 'wrong');
    });
    await act(async () => byTestId('login-submit')!.click());
    expect((await waitFor(() => byTestId('login-error'))).textContent).toMatch(/incorrect/i);
    await act(async () => type(byTestId('login-password') as HTMLInputElement, 'right'));
    await act(async () => byTestId('login-submit')!.click());
    await waitFor(() => byTestId('shares-table'));
    expect(attempts).toBe(2);
    expect(window.location.pathname).toBe('/shares');
    expect(byTestId('current-user')!.textContent).toBe('alice');
    expect(window.localStorage.length + window.sessionStorage.length).toBe(0);
  });
});

describe('worklist', () => {
  it('lists studies with formatted name, date, progress and a viewer link', async () => {
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'rad', role: 'radiologist' });
      if (url.pathname === '/api/studies') return json(200, { total: 1234, items: [STUDY] });
    });
    await render('/');
    const row = await waitFor(() => byTestId('study-row'));
    expect(row.dataset.studyUid).toBe(STUDY.study_uid);
    expect(row.textContent).toContain('Doe, Jane Q');
    expect(row.textContent).toContain('2024-03-15');
    expect(row.querySelector('[data-testid="study-progress"]')!.textContent).toContain('stored 298/300');
    expect(row.querySelector('.text-bad')!.textContent).toContain('2 failed');
    const link = row.querySelector<HTMLAnchorElement>('[data-testid="open-viewer"]')!;
    expect(link.getAttribute('href')).toBe('/pacs-viewer/viewer?StudyInstanceUIDs=1.2.840.113619.2.55.3.1');
    expect(byTestId('worklist-total')!.textContent).toContain('1,234 studies');
    expect(byTestId('page-range')!.textContent).toContain('1–50 of 1,234');
    // The counts header hides with its cells on narrow screens (.worklist .col-counts).
    expect(container.querySelector('thead th.num.col-counts')!.textContent).toBe('Series / images');
    // Radiologists share but do not see admin pages.
    expect(row.querySelector('[data-testid="share-study"]')).not.toBeNull();
    expect(row.querySelector('[data-testid="delete-study"]')).toBeNull();
    expect(byTestId('nav-users')).toBeNull();
    expect(byTestId('nav-shares')).not.toBeNull();
    const q = requests.find((r) => r.startsWith('GET /api/studies'))!;
    expect(q).toContain('sort=-study_date');
    expect(q).toContain('limit=50');
    expect(q).toContain('offset=0');
  });

  it('marks a total the server counted only so far past the page with a plus', async () => {
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'rad', role: 'radiologist' });
      if (url.pathname === '/api/studies') return json(200, { total: 1050, total_exact: false, items: [STUDY] });
    });
    await render('/');
    await waitFor(() => byTestId('study-row'));
    expect(byTestId('worklist-total')!.textContent).toContain('1,050+ studies');
    expect(byTestId('page-range')!.textContent).toContain('1–50 of 1,050+ studies');
  });

  it('debounces the search box and resets to the first page', async () => {
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'tech', role: 'technologist' });
      if (url.pathname === '/api/studies') return json(200, { total: 500, items: [STUDY] });
    });
    await render('/?page=3');
    await waitFor(() => byTestId('study-row'));
    expect(requests.filter((r) => r.startsWith('GET /api/studies'))).toEqual([
      'GET /api/studies?sort=-study_date&limit=50&offset=100',
    ]);
    // Technologists cannot share.
    expect(byTestId('share-study')).toBeNull();
    const box = byTestId('worklist-search') as HTMLInputElement;
    await act(async () => type(box, 'd'));
    await act(async () => type(box, 'do'));
    await act(async () => type(box, 'doe'));
    await settle(100);
    expect(requests.filter((r) => r.startsWith('GET /api/studies'))).toHaveLength(1);
    await settle(350);
    const studies = requests.filter((r) => r.startsWith('GET /api/studies'));
    expect(studies).toHaveLength(2);
    expect(studies[1]).toBe('GET /api/studies?q=doe&sort=-study_date&limit=50&offset=0');
  });

  it("filters by a launch's exact Patient ID until the chip is removed", async () => {
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'rad', role: 'radiologist' });
      if (url.pathname === '/api/studies') return json(200, { total: 1, items: [STUDY] });
    });
    await render('/?patient=PID-001');
    await waitFor(() => byTestId('study-row'));
    expect(byTestId('worklist-patient')!.textContent).toContain('Patient ID PID-001');
    const studies = () => requests.filter((r) => r.startsWith('GET /api/studies'));
    expect(studies()).toEqual(['GET /api/studies?patient_id=PID-001&sort=-study_date&limit=50&offset=0']);
    await act(async () => byTestId('worklist-patient')!.querySelector('button')!.click());
    await settle(50);
    expect(studies()[studies().length - 1]).toBe('GET /api/studies?sort=-study_date&limit=50&offset=0');
    expect(byTestId('worklist-patient')).toBeNull();
  });

  it('lets an admin delete a study after a confirmation naming the patient', async () => {
    const path = `/api/studies/${STUDY.study_uid}`;
    installFetch((url, init) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/studies') return json(200, { total: 1, items: [STUDY] });
      if (url.pathname === path && init.method === 'DELETE') return json(200, { study_uid: STUDY.study_uid });
    });
    await render('/');
    const row = await waitFor(() => byTestId('study-row'));
    await act(async () => row.querySelector<HTMLButtonElement>('[data-testid="delete-study"]')!.click());
    const message = byTestId('delete-study-message')!.textContent!;
    expect(message).toContain('Doe, Jane Q');
    expect(message).toContain('PID-001');
    expect(requests).not.toContain(`DELETE ${path}`);
    await act(async () => byTestId('confirm-ok')!.click());
    await settle(50);
    expect(requests).toContain(`DELETE ${path}`);
    expect(requests.filter((r) => r.startsWith('GET /api/studies'))).toHaveLength(2);
  });
});

describe('logout', () => {
  it('refreshes an expired session so the server can end it, then shows the login page', async () => {
    let loggedOut = 0;
    let expired = false;
    installFetch((url, init) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'rad', role: 'radiologist' });
      if (url.pathname === '/api/studies') return json(200, { total: 0, items: [] });
      if (url.pathname === '/api/auth/refresh') {
        expired = false;
        return json(200, { expires_in: 900, user: { username: 'rad', role: 'radiologist' } });
      }
      if (url.pathname === '/api/auth/logout') {
        expect((init.headers as Record<string, string>)['X-CSRF-Token']).toBe('c1');
        if (expired) return json(401, { status: 401, error: 'token_expired', message: 'expired' });
        loggedOut++;
        return new Response(null, { status: 204 });
      }
    });
    document.cookie = 'nn_csrf=c1; path=/';
    await render('/');
    await waitFor(() => byTestId('worklist'));
    expired = true;
    await act(async () => byTestId('logout')!.click());
    await waitFor(() => byTestId('login-username'));
    expect(loggedOut).toBe(1);
    const calls = requests.filter((r) => r !== 'GET /api/auth/oidc'); // the login page's SSO check
    expect(calls.slice(-3)).toEqual(['POST /api/auth/logout', 'POST /api/auth/refresh', 'POST /api/auth/logout']);
    expect(window.location.pathname).toBe('/login');
    document.cookie = 'nn_csrf=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/';
  });
});

describe('audit trail', () => {
  it('shows who read which patient, filters through the URL, and exports with the same filters', async () => {
    const READ = {
      id: 7,
      ts: '2026-11-29T10:00:00+00:00',
      last_ts: '2026-11-29T10:05:00+00:00',
      count: 3,
      event: 'study_read',
      username: 'rad',
      client: '10.0.0.5',
      study_uid: '1.2.3',
      patient_id: 'PID-001',
      detail: { access: 'view', first: 'frames', patient_name: 'DOE^JANE', session: 's1' },
    };
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/admin/audit') return json(200, { items: [READ] });
    });
    await render('/admin/audit');
    const row = await waitFor(() => byTestId('audit-trail-row'));
    expect(row.textContent).toContain('PID-001 (DOE^JANE)');
    expect(row.textContent).toContain('1.2.3');
    expect(row.textContent).toContain('frames');
    expect(row.textContent).not.toContain('DOE^JANE · ');
    expect(requests.filter((r) => r.startsWith('GET /api/admin/audit'))).toEqual(['GET /api/admin/audit?since=24h&limit=200']);

    await act(async () => type(byTestId('audit-patient') as HTMLInputElement, ' PID-001 '));
    await act(async () => byTestId('audit-apply')!.click());
    await waitFor(() => requests.some((r) => r.includes('patient=PID-001')));
    expect(new URLSearchParams(window.location.search).get('patient')).toBe('PID-001');
    const csv = byTestId('audit-export-csv') as HTMLAnchorElement;
    expect(csv.getAttribute('href')).toBe('/api/admin/audit/export?patient=PID-001&since=24h&limit=10000&format=csv');
    expect(byTestId('nav-audit')).not.toBeNull();
  });
});

describe('administration', () => {
  it("approves a pending account in the words of its button, not 'Enable'", async () => {
    const patches: unknown[] = [];
    installFetch((url, init) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/admin/users') {
        return json(200, {
          items: [
            { username: 'boss', role: 'admin', disabled: false, created_at: '2026-11-01T08:00:00+00:00' },
            { username: 'newbie', role: 'radiologist', disabled: true, pending: true, created_at: '2026-11-29T08:00:00+00:00' },
          ],
        });
      }
      if (url.pathname === '/api/admin/users/newbie' && init.method === 'PATCH') {
        patches.push(JSON.parse(String(init.body)));
        return json(200, {});
      }
    });
    await render('/admin/users');
    const row = await waitFor(() => container.querySelector<HTMLElement>('[data-testid="user-row"][data-username="newbie"]'));
    expect(row.textContent).toContain('Awaiting approval');
    const toggle = row.querySelector<HTMLButtonElement>('[data-testid="user-toggle"]')!;
    expect(toggle.textContent).toBe('Approve');
    await act(async () => toggle.click());
    const dialog = byTestId('confirm-dialog')!;
    expect(dialog.querySelector('h2')!.textContent).toBe('Approve user');
    expect(dialog.textContent).toContain('newbie will be able to sign in.');
    expect(byTestId('confirm-ok')!.textContent).toBe('Approve');
    await act(async () => byTestId('confirm-ok')!.click());
    await settle(50);
    expect(patches).toEqual([{ disabled: false }]);
    expect(requests.filter((r) => r === 'GET /api/admin/users')).toHaveLength(2);
  });

  it('removes a modality only after the confirmation, and not when Escape cancels it', async () => {
    installFetch((url, init) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/admin/modalities') {
        return json(200, { open: false, items: [{ ae_title: 'CT_1', host: '', description: '', created_at: '2026-11-01T08:00:00+00:00' }] });
      }
      if (url.pathname === '/api/admin/modalities/CT_1' && init.method === 'DELETE') return json(200, {});
    });
    await render('/admin/modalities');
    const remove = await waitFor(() => byTestId('modality-delete'));
    await act(async () => remove.click());
    expect(byTestId('confirm-dialog')!.textContent).toContain('CT_1 will no longer be able to send studies.');
    expect(byTestId('confirm-dialog')!.textContent).toContain('It is the last registered modality');
    expect(document.activeElement).toBe(byTestId('confirm-cancel'));
    await act(async () => {
      document.activeElement!.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }));
    });
    expect(byTestId('confirm-ok')).toBeNull();
    await act(async () => remove.click());
    await act(async () => byTestId('confirm-ok')!.click());
    await settle(50);
    expect(requests.filter((r) => r.startsWith('DELETE'))).toEqual(['DELETE /api/admin/modalities/CT_1']);
  });
});

describe('system checks', () => {
  it('shows each doctor check with its fix, and runs them again on demand', async () => {
    const REPORT = {
      status: 'WARN',
      took_ms: 140,
      checks: [
        { name: 'services', status: 'OK', message: 'all listening', fix: '' },
        { name: 'backup', status: 'WARN', message: 'no backup yet', fix: 'run `neuronova backup DEST`' },
      ],
    };
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/admin/doctor') return json(200, REPORT);
      if (url.pathname === '/api/admin/audit') return json(200, { items: [] });
    });
    await render('/admin/system');
    await waitFor(() => container.querySelectorAll('[data-testid="doctor-row"]').length === 2);
    const warn = container.querySelector<HTMLElement>('[data-testid="doctor-row"][data-status="WARN"]')!;
    expect(warn.textContent).toContain('no backup yet');
    expect(warn.textContent).toContain('run `neuronova backup DEST`');
    const runs = () => requests.filter((r) => r === 'GET /api/admin/doctor').length;
    expect(runs()).toBe(1);
    await waitFor(() => !(byTestId('doctor-run') as HTMLButtonElement).disabled);
    await act(async () => byTestId('doctor-run')!.click());
    await waitFor(() => runs() === 2);
  });

  it('shows the health warnings and colours free disk by the warning threshold', async () => {
    const SYSTEM = {
      health: { status: 'ok', components: {} },
      queue: { pending: 0, oldest_task_age_s: null },
      disk: { path: '/h', free_bytes: 1.5e9, total_bytes: 1e12, warn_free_bytes: 2e9, refuse_free_bytes: 5e8 },
      ingest: { failed: 0 },
      warnings: ['disk nearly full: 1430 MiB free'],
      version: '1.0.1',
      home: {
        version: '1.0.1',
        migrations: [{ number: 1, name: 'app database of NeuroNova 0.1.0', version: '1.0.0',
                       at: '2026-12-07T10:00:00+00:00' }],
      },
    };
    installFetch((url) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/admin/system') return json(200, SYSTEM);
      if (url.pathname === '/api/admin/audit') return json(200, { items: [] });
    });
    await render('/admin/system');
    const warnings = await waitFor(() => byTestId('system-warnings'));
    expect(warnings.textContent).toContain('disk nearly full: 1430 MiB free');
    expect(byTestId('metric-disk')!.className).toContain('metric-warn');
    expect(document.body.textContent).toContain('Version 1.0.1');
    expect(byTestId('home-migration')!.textContent).toContain('home at migration 1 (by 1.0.0)');
  });

  it('shows the queue by kind and the failed objects, and retries one or all', async () => {
    const kind = (k: string, label: string, extra: object) => ({
      kind: k, label, periodic: false, pending: 0, scheduled: 0, running: 0, waiting: null,
      oldest_pending_age_s: null, failed: null, last: null, ...extra,
    });
    const FAILED = { sop_uid: '1.2.3.4', study_uid: '1.2.3', source: 'CT_ROOM_1', attempts: 12,
                     updated_at: '2026-03-01T10:00:00+00:00', error: 'Orthanc refused it: 400' };
    const QUEUE = {
      backend: 'sqlite', pending: 7, scheduled: 1, unclassified: 0, workers: 1,
      oldest_pending_age_s: 125, failed_total: 1, error: null, failed: [FAILED],
      kinds: [
        kind('ingest', 'Ingest', { pending: 5, running: 2, waiting: 7, oldest_pending_age_s: 125, failed: 1 }),
        kind('backups', 'Backups (daily)', {
          periodic: true, pending: null, scheduled: null,
          last: { finished: '2026-03-01T02:00:00+00:00', ok: false, result: null, error: 'No space left on device' },
        }),
      ],
    };
    const bodies: unknown[] = [];
    installFetch((url, init) => {
      if (url.pathname === '/api/auth/me') return json(200, { username: 'boss', role: 'admin' });
      if (url.pathname === '/api/admin/queue') return json(200, QUEUE);
      if (url.pathname === '/api/admin/queue/retry') {
        bodies.push(JSON.parse(String(init.body)));
        return json(200, { queued: ['1.2.3.4'], not_failed: [] });
      }
      if (url.pathname === '/api/admin/audit') return json(200, { items: [] });
    });
    await render('/admin/system');
    const ingest = await waitFor(() => container.querySelector<HTMLElement>('[data-kind="ingest"]'));
    expect([...ingest.querySelectorAll('td')].map((td) => td.textContent)).toEqual(
      ['Ingest', '5', '0', '2', '7', '2 min 5 s', '1', ''],
    );
    const backups = container.querySelector<HTMLElement>('[data-kind="backups"]')!;
    expect(backups.textContent).toContain('FAILED');
    expect(backups.textContent).toContain('No space left on device');
    const row = container.querySelector<HTMLElement>('[data-testid="failed-row"]')!;
    expect(row.textContent).toContain('Orthanc refused it: 400');

    const polls = () => requests.filter((r) => r === 'GET /api/admin/queue').length;
    await act(async () => row.querySelector<HTMLButtonElement>('[data-testid="retry-one"]')!.click());
    await waitFor(() => byTestId('retry-outcome'));
    expect(bodies).toEqual([{ sop_uids: ['1.2.3.4'] }]);
    await waitFor(() => polls() >= 2); // reloaded after the retry
    await waitFor(() => !(byTestId('retry-all') as HTMLButtonElement).disabled);
    await act(async () => byTestId('retry-all')!.click());
    await waitFor(() => bodies.length === 2);
    expect(bodies[1]).toEqual({ all: true });
  });

  it('shows the FHIR push by state, a failure first, with its reason', () => {
    const url = 'https://fhir.clinic/r4';
    expect(fhirPushMetric({ url, counts: { pushed: 4, gone: 1, pending: 2 }, failures: [] })).toEqual({
      value: '5 pushed', sub: `2 waiting · to ${url}`, tone: 'ok',
    });
    const failure = { study_uid: '1.2.3', attempts: 1, error: 'HTTP 422: bad', status: 422 };
    const failed = fhirPushMetric({ url, counts: { pushed: 4, failed: 1 }, failures: [failure] });
    expect(failed).toEqual({ value: '1 failed', sub: 'HTTP 422: bad (study 1.2.3)', tone: 'bad' });
    const retrying = { ...failure, error: 'unreachable', status: null };
    expect(fhirPushMetric({ url, counts: { pending: 1 }, failures: [retrying] }).tone).toBe('warn');
  });

  it('shows the last backup with its age, or its failure, and the next daily run', async () => {
    const daily = { destination: '/mnt/b', time_utc: '02:30', next: '2026-03-02T02:30:00+00:00', remote: 'gcs:c/nn' };
    const ok = { ok: true, dest: '/mnt/b', snapshot: 's', error: null };
    expect(backupMetric({ last: ok, age_s: 7200, daily })).toMatchObject({ value: '2 h ago', tone: 'ok' });
    expect(backupMetric({ last: ok, age_s: 30 * 3600, daily }).tone).toBe('warn');
    expect(backupMetric({ last: ok, age_s: 60, daily }).sub).toContain('into /mnt/b, then gcs:c/nn');
    const failed = backupMetric({ last: { ...ok, ok: false, error: 'disk full' }, age_s: 60, daily: null });
    expect(failed).toMatchObject({ value: 'Failed', tone: 'bad' });
    expect(failed.sub).toBe('disk full · daily backup off ([backup] destination)');
    expect(backupMetric({ last: null, age_s: null, daily: null })).toMatchObject({ value: 'None yet', tone: 'warn' });
  });
});
