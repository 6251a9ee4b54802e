import { useCallback, useState } from 'react';

export interface ActionState {
  /** True while the action runs (its buttons are disabled then). */
  busy: boolean;
  /** The last run's failure, or a form's own problem set with `setError`; null when none. */
  error: unknown;
  setError: (error: unknown) => void;
  /** Run `action`; true when it succeeded, false when it failed (the failure is in `error`). */
  run: (action: () => Promise<unknown>) => Promise<boolean>;
}

/** A user's action that calls the server (submit a form, confirm a deletion, retry). */
export function useAction(): ActionState {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const run = useCallback(async (action: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await action();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, setError, run };
}
