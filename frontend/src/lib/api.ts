// The API client. Auth is an HttpOnly same-origin session cookie set by the server:
// no token is ever kept in JS storage. State-changing requests carry the CSRF header
// from the readable `nn_csrf` cookie. A 401 triggers one refresh and one retry; if
// that fails the auth-failure handler sends the user to the login page.

export interface ApiErrorBody {
  status?: number;
  error?: string;
  message?: string;
  retry_after?: number;
  [key: string]: unknown;
}

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly body: ApiErrorBody | null;

  constructor(status: number, body: ApiErrorBody | null, fallback?: string) {
    const message =
      (body && typeof body.message === 'string' && body.message) ||
      fallback ||
      defaultMessage(status);
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = (body && typeof body.error === 'string' && body.error) || `http_${status}`;
    this.body = body;
  }

  /** Seconds to wait after a 429, from the body's retry_after. */
  get retryAfter(): number | null {
    const v = this.body?.retry_after;
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  }
}

function defaultMessage(status: number): string {
  if (status === 0) return 'The server could not be reached. Check the network connection.';
  if (status === 401) return 'Your session has ended. Please sign in again.';
  if (status === 403) return 'You do not have permission for this action.';
  if (status === 404) return 'Not found.';
  if (status === 429) return 'Too many requests. Please wait and try again.';
  if (status >= 500) return `The server had a problem (HTTP ${status}). Try again shortly.`;
  return `Request failed (HTTP ${status}).`;
}

export type Role = 'admin' | 'radiologist' | 'technologist';

export interface User {
  username: string;
  role: Role;
}

export interface LoginResponse {
  access_token?: string;
  expires_in: number;
  user: User;
}

export interface Progress {
  received: number;
  transcoded: number;
  stored: number;
  failed: number;
}

export interface Study {
  study_uid: string;
  patient_name: string;
  patient_id: string;
  study_date: string;
  modalities: string[];
  description: string;
  series_count: number;
  instance_count: number;
  progress: Progress;
  updated_at: string | number | null;
}

export interface StudyList {
  /** Exact when total_exact; else at least this many (the server counts only so far past the page). */
  total: number;
  total_exact?: boolean;
  items: Study[];
}

export interface StudyQuery {
  q?: string;
  patient_id?: string;
  modality?: string;
  date_from?: string;
  date_to?: string;
  sort?: string;
  limit: number;
  offset: number;
}

export interface Share {
  id: string;
  study_uid: string;
  created_by: string;
  created_at: string | number;
  expires_at: string | number;
  revoked: boolean;
  note: string | null;
}

export interface CreatedShare {
  id: string;
  url: string;
  expires_at: string | number;
}

export interface SsoConfig {
  enabled: boolean;
  display_name: string;
}

/** Where the single sign-on button goes: the provider, then back to ``next``. */
export function ssoStartUrl(next: string): string {
  return `/api/auth/oidc/start?next=${encodeURIComponent(next)}`;
}

export interface AdminUser {
  username: string;
  role: Role;
  disabled: boolean;
  /** Created by single sign-on, waiting for an admin to enable (approve) the account. */
  pending?: boolean;
  created_at: string | number | null;
  last_login: string | number | null;
}

export interface Modality {
  ae_title: string;
  host: string | null;
  description: string | null;
  created_at: string | number | null;
}

export interface ComponentHealth {
  status: string;
  detail?: unknown;
}

export interface SystemInfo {
  health: { status: 'ok' | 'degraded' | string; components: Record<string, ComponentHealth> };
  queue: { pending: number; oldest_task_age_s: number | null };
  /** warn_free_bytes: [dicom] warn_free_mb; refuse_free_bytes: the receiver refuses below. */
  disk: { path: string; free_bytes: number; total_bytes: number; warn_free_bytes?: number; refuse_free_bytes?: number };
  ingest: { failed: number };
  warnings?: string[];
  /** The last backup (run/backup-status.json), its age, and the daily schedule ([backup]). */
  backup?: BackupInfo;
  /** The push to the clinic's FHIR server ([fhir] push_url); null when it is off. */
  fhir_push?: FhirPushInfo | null;
  version: string;
  /** The data home's record (HOME/version.json): the version that last started on it and
   *  the migrations that ran, each with the version that ran it; {} before the first. */
  home?: { version?: string; migrations?: HomeMigration[] };
}

export interface HomeMigration {
  number: number;
  name: string;
  version: string;
  at: string;
}

export interface FhirPushInfo {
  url: string;
  /** Studies by push state: pending, pushed, failed, gone (deleted there too). */
  counts: Partial<Record<'pending' | 'pushed' | 'failed' | 'gone', number>>;
  /** The latest failures (and pending pushes that failed once), newest first. */
  failures: { study_uid: string; attempts: number; error: string | null; status: number | null }[];
}

export interface BackupInfo {
  last: { ok: boolean; dest: string; snapshot: string | null; error: string | null; remote?: string | null } | null;
  age_s: number | null;
  /** null: the daily backup is off ([backup] destination empty). next: ISO time, UTC. */
  daily: { destination: string; time_utc: string; next: string; remote: string | null } | null;
}

/** One check of `neuronova doctor` (GET /api/admin/doctor). */
export interface DoctorCheck {
  name: string;
  status: 'OK' | 'WARN' | 'FAIL';
  message: string;
  fix: string;
}

export interface DoctorReport {
  status: 'OK' | 'WARN' | 'FAIL';
  checks: DoctorCheck[];
  took_ms: number;
}

/** How a periodic task (or the last backup) ended. */
export interface TaskOutcome {
  finished: string;
  ok: boolean;
  result: unknown;
  error: string | null;
}

/** One kind of task in the queue monitor (GET /api/admin/queue). null: not known. */
export interface QueueKind {
  kind: string;
  label: string;
  periodic: boolean;
  pending: number | null;
  scheduled: number | null;
  running: number;
  /** Objects not done yet (ingest, previews); null for periodic tasks. */
  waiting: number | null;
  oldest_pending_age_s: number | null;
  failed: number | null;
  last: TaskOutcome | null;
}

export interface FailedObject {
  sop_uid: string;
  study_uid: string;
  source: string;
  attempts: number;
  updated_at: string;
  error: string;
}

export interface QueueState {
  backend: 'sqlite' | 'redis';
  pending: number | null;
  scheduled: number | null;
  unclassified: number;
  workers: number;
  oldest_pending_age_s: number | null;
  failed_total: number;
  kinds: QueueKind[];
  /** The newest failed objects with their reason. */
  failed: FailedObject[];
  /** Set when the queue storage (SQLite file or Redis) did not answer. */
  error: string | null;
}

export interface AuditEvent {
  id?: number;
  ts: string | number;
  /** The latest occurrence of a counted (aggregated) event. */
  last_ts?: string | null;
  count?: number;
  event: string;
  username: string | null;
  client: string | null;
  study_uid?: string | null;
  patient_id?: string | null;
  detail: unknown;
}

/** Filters of the audit trail (GET /api/admin/audit and its export). */
export interface AuditQuery {
  event?: string;
  user?: string;
  study?: string;
  patient?: string;
  /** 30m, 24h, 7d or an ISO time. */
  since?: string;
  limit?: number;
}

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface RequestOptions {
  body?: unknown;
  signal?: AbortSignal;
  /** false: no refresh/retry on 401 and no redirect (login, refresh, logout). */
  auth?: boolean;
  /** false: refresh and retry on 401, but do not call the auth-failure handler. */
  redirectOnAuthFailure?: boolean;
}

export interface ApiClientOptions {
  fetch?: typeof fetch;
  getCsrfToken?: () => string | null;
  /** Called when a 401 could not be cured by a refresh. */
  onAuthFailure?: () => void;
}

export const CSRF_COOKIE = 'nn_csrf';
export const CSRF_HEADER = 'X-CSRF-Token';

export function readCookie(name: string, cookieString: string = document.cookie): string | null {
  for (const part of cookieString.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) {
      const raw = part.slice(eq + 1).trim();
      try {
        return decodeURIComponent(raw);
      } catch {
        return raw;
      }
    }
  }
  return null;
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export function createApiClient(options: ApiClientOptions = {}) {
  const doFetch: typeof fetch = options.fetch ?? ((...a) => globalThis.fetch(...a));
  const getCsrf = options.getCsrfToken ?? (() => readCookie(CSRF_COOKIE));
  let onAuthFailure = options.onAuthFailure ?? (() => {});
  let refreshing: Promise<boolean> | null = null;

  async function send(method: Method, path: string, opts: RequestOptions): Promise<Response> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    let body: string | undefined;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    if (!SAFE_METHODS.has(method) && path !== '/api/auth/login') {
      const token = getCsrf();
      if (token) headers[CSRF_HEADER] = token;
    }
    try {
      return await doFetch(path, {
        method,
        headers,
        body,
        credentials: 'same-origin',
        cache: 'no-store',
        signal: opts.signal,
      });
    } catch (e) {
      if (e instanceof DOMException && e.name === 'AbortError') throw e;
      if (opts.signal?.aborted) throw e;
      throw new ApiError(0, null);
    }
  }

  async function parse<T>(res: Response): Promise<T> {
    if (res.status === 204 || res.status === 205) return null as T;
    const text = await res.text();
    if (!text) return null as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(res.status, null, 'The server sent a response that could not be read.');
    }
  }

  async function toError(res: Response): Promise<ApiError> {
    let body: ApiErrorBody | null = null;
    try {
      const text = await res.text();
      const parsed: unknown = text ? JSON.parse(text) : null;
      if (parsed && typeof parsed === 'object') body = parsed as ApiErrorBody;
    } catch {
      body = null; // e.g. an HTML error page from a proxy
    }
    return new ApiError(res.status, body);
  }

  /** POST /api/auth/refresh; concurrent callers share one request. */
  function refresh(): Promise<boolean> {
    if (!refreshing) {
      refreshing = (async () => {
        try {
          const res = await send('POST', '/api/auth/refresh', {});
          if (res.ok) {
            await res.text().catch(() => '');
            return true;
          }
          return false;
        } catch {
          return false;
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  }

  async function request<T>(method: Method, path: string, opts: RequestOptions = {}): Promise<T> {
    const useAuth = opts.auth !== false;
    let res = await send(method, path, opts);
    if (res.status === 401 && useAuth) {
      if (await refresh()) {
        res = await send(method, path, opts);
      }
      if (res.status === 401 && opts.redirectOnAuthFailure !== false) {
        onAuthFailure();
      }
    }
    if (!res.ok) throw await toError(res);
    return parse<T>(res);
  }

  return {
    request,
    refresh,
    setAuthFailureHandler(fn: () => void) {
      onAuthFailure = fn;
    },
    get: <T>(path: string, opts?: RequestOptions) => request<T>('GET', path, opts),
    post: <T>(path: string, body?: unknown, opts?: RequestOptions) =>
      request<T>('POST', path, { ...opts, body }),
    patch: <T>(path: string, body?: unknown, opts?: RequestOptions) =>
      request<T>('PATCH', path, { ...opts, body }),
    del: <T = null>(path: string, opts?: RequestOptions) => request<T>('DELETE', path, opts),
  };
}

export type ApiClient = ReturnType<typeof createApiClient>;

/** The app-wide client. The auth provider installs the failure handler. */
export const api = createApiClient();

function query(params: Record<string, string | number | undefined | null>): string {
  const sp = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') sp.set(k, String(v));
  }
  const s = sp.toString();
  return s ? `?${s}` : '';
}

const enc = encodeURIComponent;

// Typed endpoint helpers (the contract in one place).
export const endpoints = {
  login: (username: string, password: string) =>
    api.post<LoginResponse>('/api/auth/login', { username, password }, { auth: false }),
  // Refresh-and-retry on 401 so that an expired access cookie still ends the server
  // session (otherwise the refresh cookie would silently sign the user back in).
  logout: () => api.post<null>('/api/auth/logout', undefined, { redirectOnAuthFailure: false }),
  me: (signal?: AbortSignal) =>
    api.get<User>('/api/auth/me', { signal, redirectOnAuthFailure: false }),
  /** Whether single sign-on is set up, and the provider's name for the button. */
  ssoConfig: (signal?: AbortSignal) =>
    api.get<SsoConfig>('/api/auth/oidc', { signal, auth: false, redirectOnAuthFailure: false }),

  studies: (q: StudyQuery, signal?: AbortSignal) =>
    api.get<StudyList>(`/api/studies${query({ ...q })}`, { signal }),

  createShare: (study_uid: string, expires_in_hours: number, note: string) =>
    api.post<CreatedShare>('/api/shares', { study_uid, expires_in_hours, note }),
  shares: (signal?: AbortSignal) => api.get<{ items: Share[] }>('/api/shares', { signal }),
  revokeShare: (id: string) => api.del(`/api/shares/${enc(id)}`),
  deleteStudy: (uid: string) => api.del(`/api/studies/${enc(uid)}`),

  users: (signal?: AbortSignal) => api.get<{ items: AdminUser[] }>('/api/admin/users', { signal }),
  createUser: (username: string, role: Role, password: string) =>
    api.post<unknown>('/api/admin/users', { username, role, password }),
  updateUser: (username: string, patch: { role?: Role; disabled?: boolean; password?: string }) =>
    api.patch<unknown>(`/api/admin/users/${enc(username)}`, patch),

  modalities: (signal?: AbortSignal) =>
    api.get<{ items: Modality[]; open: boolean }>('/api/admin/modalities', { signal }),
  createModality: (m: { ae_title: string; host?: string; description?: string }) =>
    api.post<unknown>('/api/admin/modalities', m),
  deleteModality: (ae: string) => api.del(`/api/admin/modalities/${enc(ae)}`),

  system: (signal?: AbortSignal) => api.get<SystemInfo>('/api/admin/system', { signal }),
  doctor: (signal?: AbortSignal) => api.get<DoctorReport>('/api/admin/doctor', { signal }),
  queue: (signal?: AbortSignal) => api.get<QueueState>('/api/admin/queue', { signal }),
  /** Queue failed objects again: these SOP Instance UIDs, or every failed one. */
  retryFailed: (which: { sop_uids: string[] } | { all: true }) =>
    api.post<{ queued: string[]; not_failed: string[] }>('/api/admin/queue/retry', which),
  audit: (limit: number, signal?: AbortSignal) =>
    api.get<{ items: AuditEvent[] }>(`/api/admin/audit${query({ limit })}`, { signal }),
  auditSearch: (q: AuditQuery, signal?: AbortSignal) =>
    api.get<{ items: AuditEvent[] }>(`/api/admin/audit${query({ ...q })}`, { signal }),
};

/** Where the browser downloads the filtered audit trail as a file (the session cookie authorizes it). */
export function auditExportUrl(q: AuditQuery, format: 'csv' | 'json'): string {
  return `/api/admin/audit/export${query({ ...q, format })}`;
}

export function viewerUrl(studyUid: string): string {
  return `/pacs-viewer/viewer?StudyInstanceUIDs=${enc(studyUid)}`;
}
