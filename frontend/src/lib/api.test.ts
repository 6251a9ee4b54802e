import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError, createApiClient, readCookie } from './api';

type Call = { url: string; init: RequestInit };

function json(status: number, body: unknown): Response {
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' },
  });
}

/** A fetch double that answers from a queue and records the calls. */
function fakeFetch(...responses: Array<Response | ((call: Call) => Response)>) {
  const calls: Call[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const call = { url: String(input), init };
    calls.push(call);
    const next = responses.shift();
    if (!next) throw new Error(`unexpected request ${call.init.method} ${call.url}`);
    return typeof next === 'function' ? next(call) : next;
  });
  return { fn: fn as unknown as typeof fetch, calls };
}

const header = (c: Call, name: string) => (c.init.headers as Record<string, string>)[name];

function clearCookies() {
  for (const c of document.cookie.split(';')) {
    const name = c.split('=')[0].trim();
    if (name) document.cookie = `${name}=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/`;
  }
}

describe('CSRF header', () => {
  beforeEach(() => {
    clearCookies();
    document.cookie = 'other=1; path=/';
    document.cookie = 'nn_csrf=tok-123; path=/';
  });
  afterEach(clearCookies);

  it('reads the nn_csrf cookie from document.cookie', () => {
    expect(readCookie('nn_csrf')).toBe('tok-123');
    expect(readCookie('missing')).toBeNull();
    expect(readCookie('nn_csrf', 'a=1; nn_csrf=x%2By; b=2')).toBe('x+y');
  });

  it('is sent on POST, PATCH and DELETE with the cookie value, same-origin credentials', async () => {
    const { fn, calls } = fakeFetch(json(201, { id: 's1' }), json(200, {}), json(204, undefined));
    const api = createApiClient({ fetch: fn });
    await api.post('/api/shares', { study_uid: '1.2.3' });
    await api.patch('/api/admin/users/bob', { disabled: true });
    await api.del('/api/shares/s1');
    for (const c of calls) {
      expect(header(c, 'X-CSRF-Token')).toBe('tok-123');
      expect(c.init.credentials).toBe('same-origin');
    }
    expect(calls[0].init.body).toBe(JSON.stringify({ study_uid: '1.2.3' }));
    expect(header(calls[0], 'Content-Type')).toBe('application/json');
  });

  it('is not sent on GET or on login', async () => {
    const { fn, calls } = fakeFetch(json(200, { total: 0, items: [] }), json(200, { user: {} }));
    const api = createApiClient({ fetch: fn });
    await api.get('/api/studies');
    await api.post('/api/auth/login', { username: 'a', password: 'b' }, { auth: false });
    expect(header(calls[0], 'X-CSRF-Token')).toBeUndefined();
    expect(header(calls[1], 'X-CSRF-Token')).toBeUndefined();
    expect(calls[0].init.credentials).toBe('same-origin');
  });

  it('never puts a token in web storage', async () => {
    const { fn } = fakeFetch(json(200, { access_token: 'secret', expires_in: 900, user: { username: 'a', role: 'admin' } }));
    const api = createApiClient({ fetch: fn });
    await api.post('/api/auth/login', { username: 'a', password: 'b' }, { auth: false });
    expect(localStorage.length).toBe(0);
    expect(sessionStorage.length).toBe(0);
  });
});

describe('401 handling', () => {
  it('refreshes once and retries the request with the new CSRF cookie', async () => {
    let csrf = 'old';
    const { fn, calls } = fakeFetch(
      json(401, { status: 401, error: 'token_expired', message: 'expired' }),
      () => {
        csrf = 'new';
        return json(200, { expires_in: 900, user: { username: 'a', role: 'admin' } });
      },
      json(201, { id: 'x', url: '/s/x', expires_at: 'later' }),
    );
    const onAuthFailure = vi.fn();
    const api = createApiClient({ fetch: fn, getCsrfToken: () => csrf, onAuthFailure });
    const res = await api.post<{ id: string }>('/api/shares', { study_uid: '1' });
    expect(res.id).toBe('x');
    expect(calls.map((c) => `${c.init.method} ${c.url}`)).toEqual([
      'POST /api/shares',
      'POST /api/auth/refresh',
      'POST /api/shares',
    ]);
    expect(header(calls[0], 'X-CSRF-Token')).toBe('old');
    expect(header(calls[1], 'X-CSRF-Token')).toBe('old');
    expect(calls[1].init.body).toBeUndefined();
    expect(header(calls[2], 'X-CSRF-Token')).toBe('new');
    expect(calls[2].init.body).toBe(JSON.stringify({ study_uid: '1' }));
    expect(onAuthFailure).not.toHaveBeenCalled();
  });

  it('calls the auth-failure handler when the refresh fails, and throws the 401', async () => {
    const { fn, calls } = fakeFetch(
      json(401, { status: 401, error: 'token_expired', message: 'Session expired' }),
      json(401, { status: 401, error: 'invalid_refresh', message: 'no' }),
    );
    const onAuthFailure = vi.fn();
    const api = createApiClient({ fetch: fn, getCsrfToken: () => 't', onAuthFailure });
    const err = await api.get('/api/studies').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(401);
    expect((err as ApiError).code).toBe('token_expired');
    expect((err as ApiError).message).toBe('Session expired');
    expect(calls).toHaveLength(2);
    expect(onAuthFailure).toHaveBeenCalledTimes(1);
  });

  it('gives up after one retry if the retried request is still 401', async () => {
    const { fn, calls } = fakeFetch(json(401, {}), json(200, {}), json(401, {}));
    const onAuthFailure = vi.fn();
    const api = createApiClient({ fetch: fn, onAuthFailure });
    await expect(api.get('/api/admin/users')).rejects.toMatchObject({ status: 401 });
    expect(calls).toHaveLength(3);
    expect(onAuthFailure).toHaveBeenCalledTimes(1);
  });

  it('shares one refresh between concurrent 401s', async () => {
    let refreshes = 0;
    const { fn, calls } = fakeFetch(
      json(401, {}),
      json(401, {}),
      () => {
        refreshes++;
        return json(200, {});
      },
      json(200, { n: 1 }),
      json(200, { n: 2 }),
    );
    const api = createApiClient({ fetch: fn });
    const [a, b] = await Promise.all([api.get<{ n: number }>('/api/a'), api.get<{ n: number }>('/api/b')]);
    expect(refreshes).toBe(1);
    expect([a.n, b.n].sort()).toEqual([1, 2]);
    expect(calls.filter((c) => c.url === '/api/auth/refresh')).toHaveLength(1);
  });

  it('does not refresh for login (bad credentials are just an error)', async () => {
    const { fn, calls } = fakeFetch(json(401, { status: 401, error: 'bad_credentials', message: 'Invalid' }));
    const onAuthFailure = vi.fn();
    const api = createApiClient({ fetch: fn, onAuthFailure });
    await expect(api.post('/api/auth/login', {}, { auth: false })).rejects.toMatchObject({ status: 401 });
    expect(calls).toHaveLength(1);
    expect(onAuthFailure).not.toHaveBeenCalled();
  });

  it('can refresh without redirecting (session probe at start-up)', async () => {
    const { fn } = fakeFetch(json(401, {}), json(401, {}));
    const onAuthFailure = vi.fn();
    const api = createApiClient({ fetch: fn, onAuthFailure });
    await expect(api.get('/api/auth/me', { redirectOnAuthFailure: false })).rejects.toMatchObject({ status: 401 });
    expect(onAuthFailure).not.toHaveBeenCalled();
  });
});

describe('errors', () => {
  it('exposes retry_after from a 429', async () => {
    const { fn } = fakeFetch(json(429, { status: 429, error: 'throttled', message: 'Too many attempts', retry_after: 42 }));
    const api = createApiClient({ fetch: fn });
    const err = (await api.post('/api/auth/login', {}, { auth: false }).catch((e: unknown) => e)) as ApiError;
    expect(err.status).toBe(429);
    expect(err.retryAfter).toBe(42);
    expect(err.message).toBe('Too many attempts');
  });

  it('copes with a non-JSON error page (e.g. 502 from the proxy)', async () => {
    const { fn } = fakeFetch(new Response('<html>Bad Gateway</html>', { status: 502 }));
    const api = createApiClient({ fetch: fn });
    const err = (await api.get('/api/admin/system').catch((e: unknown) => e)) as ApiError;
    expect(err.status).toBe(502);
    expect(err.code).toBe('http_502');
    expect(err.message).toMatch(/server had a problem/);
  });

  it('maps a network failure to status 0', async () => {
    const api = createApiClient({
      fetch: (async () => {
        throw new TypeError('Failed to fetch');
      }) as typeof fetch,
    });
    await expect(api.get('/api/studies')).rejects.toMatchObject({ status: 0 });
  });

  it('returns null for 204', async () => {
    const { fn } = fakeFetch(new Response(null, { status: 204 }));
    const api = createApiClient({ fetch: fn });
    await expect(api.del('/api/shares/1')).resolves.toBeNull();
  });
});
