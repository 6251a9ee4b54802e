import { useEffect, useRef, useState, type FormEvent } from 'react';
import { ApiError, endpoints, ssoStartUrl, type SsoConfig } from '../lib/api';
import { useAuth } from '../lib/auth';
import { navigate, safeNextPath, useLocation } from '../lib/router';
import { Logo } from '../components/Layout';
import { isAppRoute } from '../routes';

/** Go to the post-login destination: client-side for our routes, a full load otherwise (e.g. the viewer). */
export function goNext(next: string) {
  const path = next.split(/[?#]/)[0];
  if (isAppRoute(path)) navigate(next, { replace: true });
  else window.location.assign(next);
}

export function LoginPage() {
  const { state, signedIn } = useAuth();
  const { params } = useLocation();
  const next = safeNextPath(params.get('next'));
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [retryUntil, setRetryUntil] = useState<number | null>(null);
  const [now, setNow] = useState(() => Date.now());
  const passwordRef = useRef<HTMLInputElement>(null);
  const [sso, setSso] = useState<SsoConfig | null>(null);

  // "Sign in with ..." only when the appliance has a single sign-on provider.
  useEffect(() => {
    const ctrl = new AbortController();
    endpoints.ssoConfig(ctrl.signal).then(setSso, () => setSso(null));
    return () => ctrl.abort();
  }, []);

  // Already signed in (e.g. back button): go on to an app page. A destination outside
  // the app (the viewer) gets a button instead, so a page that keeps sending us back
  // here cannot cause a redirect loop.
  const nextIsApp = isAppRoute(next.split(/[?#]/)[0]);
  const alreadySignedIn = state.status === 'authenticated' && !busy;
  useEffect(() => {
    if (alreadySignedIn && nextIsApp) goNext(next);
  }, [alreadySignedIn, nextIsApp, next]);

  // Throttling countdown.
  useEffect(() => {
    if (retryUntil == null) return;
    const id = window.setInterval(() => {
      const t = Date.now();
      setNow(t);
      if (t >= retryUntil) {
        setRetryUntil(null);
        setError(null);
      }
    }, 250);
    return () => window.clearInterval(id);
  }, [retryUntil]);

  const waitSeconds = retryUntil == null ? 0 : Math.max(0, Math.ceil((retryUntil - now) / 1000));
  const throttled = waitSeconds > 0;

  async function submit(e: FormEvent) {
    e.preventDefault();
    if (busy || throttled) return;
    if (!username.trim() || !password) {
      setError('Enter your user name and password.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const res = await endpoints.login(username.trim(), password);
      setPassword('');
      signedIn(res.user);
      goNext(next);
    } catch (err) {
      setPassword('');
      if (err instanceof ApiError && err.status === 429) {
        const s = Math.max(1, Math.ceil(err.retryAfter ?? 30));
        setRetryUntil(Date.now() + s * 1000);
        setNow(Date.now());
        setError('throttled');
      } else if (err instanceof ApiError && err.status === 401) {
        setError('Incorrect user name or password.');
        passwordRef.current?.focus();
      } else if (err instanceof ApiError && err.status === 403) {
        setError(err.message || 'This account is disabled. Contact your administrator.');
      } else {
        setError(err instanceof Error ? err.message : 'Sign-in failed.');
      }
    } finally {
      setBusy(false);
    }
  }

  const message =
    error === 'throttled'
      ? throttled
        ? `Too many sign-in attempts. Try again in ${waitSeconds}\u00a0s.`
        : null
      : error;

  return (
    <div className="login-page">
      <div className="login-card">
        <div className="login-brand">
          <Logo />
          <div>
            <div className="login-product">NeuroNova</div>
            <div className="login-tagline">Imaging gateway</div>
          </div>
        </div>
        {alreadySignedIn && !nextIsApp && state.user && (
          <div className="alert alert-info">
            <span>
              Signed in as <strong>{state.user.username}</strong>.
            </span>
            <a className="btn btn-sm btn-primary" href={next}>
              Continue
            </a>
          </div>
        )}
        <h1 className="login-title">Sign in</h1>
        <form onSubmit={submit} noValidate>
          <label className="field">
            <span className="field-label">User name</span>
            <input
              className="input"
              name="username"
              autoComplete="username"
              autoCapitalize="none"
              spellCheck={false}
              autoFocus
              value={username}
              onChange={(e) => setUsername(e.target.value)}
              data-testid="login-username"
            />
          </label>
          <label className="field">
            <span className="field-label">Password</span>
            <input
              ref={passwordRef}
              className="input"
              type="password"
              name="password"
              autoComplete="current-password"
              value={password}
              onChange={(e) => setPassword(e.target.value)}
              data-testid="login-password"
            />
          </label>
          {message && (
            <div className="alert alert-error" role="alert" data-testid="login-error">
              {message}
            </div>
          )}
          <button
            type="submit"
            className="btn btn-primary btn-block"
            disabled={busy || throttled}
            data-testid="login-submit"
          >
            {busy ? 'Signing in…' : 'Sign in'}
          </button>
        </form>
        {sso?.enabled && (
          <>
            <div className="login-or">or</div>
            <a className="btn btn-block" href={ssoStartUrl(next)} data-testid="login-sso">
              Sign in with {sso.display_name}
            </a>
          </>
        )}
      </div>
      <p className="login-foot">Authorised clinical staff only. Access is logged.</p>
    </div>
  );
}
