import { useCallback, useEffect, useRef, useState } from 'react';

export interface FetchState<T> {
  data: T | null;
  error: Error | null;
  /** True while the first load (or a load after the key changed) is running. */
  loading: boolean;
  /** True while any request is running, including background refreshes. */
  busy: boolean;
  updatedAt: number | null;
  reload: () => void;
}

/**
 * Load data with `fn` whenever `key` changes; older responses are aborted and ignored.
 * With `intervalMs` the data is refreshed in the background while the tab is visible.
 */
export function useFetch<T>(
  fn: (signal: AbortSignal) => Promise<T>,
  key: string,
  opts: { intervalMs?: number } = {},
): FetchState<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [loading, setLoading] = useState(true);
  const [busy, setBusy] = useState(true);
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);
  const [tick, setTick] = useState(0);
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const lastKey = useRef<string | null>(null);

  useEffect(() => {
    const ctl = new AbortController();
    const keyChanged = lastKey.current !== key;
    lastKey.current = key;
    if (keyChanged) setLoading(true);
    setBusy(true);
    fnRef
      .current(ctl.signal)
      .then((d) => {
        if (ctl.signal.aborted) return;
        setData(d);
        setError(null);
        setUpdatedAt(Date.now());
      })
      .catch((e: unknown) => {
        if (ctl.signal.aborted) return;
        setError(e instanceof Error ? e : new Error(String(e)));
      })
      .finally(() => {
        if (ctl.signal.aborted) return;
        setLoading(false);
        setBusy(false);
      });
    return () => ctl.abort();
  }, [key, tick]);

  const interval = opts.intervalMs;
  useEffect(() => {
    if (!interval) return;
    const id = window.setInterval(() => {
      if (document.visibilityState !== 'hidden') setTick((t) => t + 1);
    }, interval);
    return () => window.clearInterval(id);
  }, [interval, key]);

  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, busy, updatedAt, reload };
}

/** A value that follows `value` after it has stopped changing for `ms`. */
export function useDebounced<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const id = window.setTimeout(() => setV(value), ms);
    return () => window.clearTimeout(id);
  }, [value, ms]);
  return v;
}
