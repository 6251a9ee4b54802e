// A tiny history-API router: enough for a handful of flat routes.
import { useSyncExternalStore, type AnchorHTMLAttributes, type MouseEvent } from 'react';

const EVENT = 'nn:navigate';

function subscribe(cb: () => void): () => void {
  window.addEventListener('popstate', cb);
  window.addEventListener(EVENT, cb);
  return () => {
    window.removeEventListener('popstate', cb);
    window.removeEventListener(EVENT, cb);
  };
}

const getHref = () => window.location.pathname + window.location.search;

export interface Location {
  pathname: string;
  search: string;
  params: URLSearchParams;
}

/** The current location; re-renders on navigation. */
export function useLocation(): Location {
  const href = useSyncExternalStore(subscribe, getHref, getHref);
  const url = new URL(href, 'http://x');
  return { pathname: url.pathname, search: url.search, params: url.searchParams };
}

export function navigate(to: string, opts: { replace?: boolean } = {}): void {
  if (to === getHref()) {
    if (!opts.replace) window.scrollTo?.(0, 0);
    return;
  }
  if (opts.replace) window.history.replaceState(null, '', to);
  else window.history.pushState(null, '', to);
  window.dispatchEvent(new Event(EVENT));
  if (!opts.replace) window.scrollTo?.(0, 0);
}

/** Replace only the query string of the current path (for filters and paging). */
export function setSearchParams(params: Record<string, string | number | null | undefined>): void {
  const sp = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') sp.set(k, String(v));
  }
  const s = sp.toString();
  navigate(window.location.pathname + (s ? `?${s}` : ''), { replace: true });
}

type LinkProps = AnchorHTMLAttributes<HTMLAnchorElement> & { to: string };

/** An in-app link: a real <a href> (middle-click, copy link work) with client-side navigation. */
export function Link({ to, onClick, target, ...rest }: LinkProps) {
  function handle(e: MouseEvent<HTMLAnchorElement>) {
    onClick?.(e);
    if (
      e.defaultPrevented ||
      e.button !== 0 ||
      e.metaKey ||
      e.ctrlKey ||
      e.shiftKey ||
      e.altKey ||
      (target && target !== '_self')
    ) {
      return;
    }
    e.preventDefault();
    navigate(to);
  }
  return <a href={to} target={target} onClick={handle} {...rest} />;
}

/**
 * A safe post-login destination: a same-origin absolute path, never "//host" or a URL
 * with a scheme (open-redirect guard). Falls back to "/".
 */
export function safeNextPath(next: string | null | undefined): string {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/';
  if (/[\u0000-\u001f]/.test(next)) return '/';
  try {
    const u = new URL(next, 'http://origin.invalid');
    if (u.origin !== 'http://origin.invalid') return '/';
    return u.pathname + u.search + u.hash;
  } catch {
    return '/';
  }
}

/** The path to come back to after signing in: current path + query. */
export function loginUrlForCurrentPage(): string {
  const here = getHref();
  if (window.location.pathname === '/login') return here;
  return here === '/' ? '/login' : `/login?next=${encodeURIComponent(here)}`;
}
