import { useEffect, useRef, type ReactNode } from 'react';
import { useAction } from '../lib/useAction';
import { ErrorBanner, Modal } from './ui';

/**
 * The confirmation before a destructive (or account-changing) action on one thing: open
 * while `target` is set, it says what will happen to it (`message`, which names it),
 * with Cancel (focused first, as is Escape) and the confirm button. While the action
 * runs both buttons are disabled and the confirm button says "Working…"; a failure is
 * shown in the dialog, which stays open; on success `onDone` runs and it closes.
 */
export function ConfirmAction<T>({
  target,
  title,
  message,
  confirmLabel,
  danger = true,
  irreversible = false,
  onConfirm,
  onDone,
  onClose,
  testId,
}: {
  target: T | null;
  title: string;
  /** What will happen, naming the thing (e.g. <strong>CT_1</strong> will no longer…). */
  message: (target: T) => ReactNode;
  confirmLabel: string;
  /** A red confirm button (default); false for an action that only restores access. */
  danger?: boolean;
  /** Adds "This cannot be undone." */
  irreversible?: boolean;
  onConfirm: (target: T) => Promise<unknown>;
  onDone?: () => void;
  onClose: () => void;
  testId?: string;
}) {
  const { busy, error, setError, run } = useAction();
  const cancelRef = useRef<HTMLButtonElement>(null);
  const open = target !== null;
  useEffect(() => {
    setError(null);
    // After the dialog's own effect has shown it (child effects run first).
    if (open) cancelRef.current?.focus();
  }, [open, setError]);

  async function confirm(t: T) {
    if (!(await run(() => onConfirm(t)))) return;
    onDone?.();
    onClose();
  }

  return (
    <Modal
      title={title}
      open={open}
      onClose={onClose}
      testId="confirm-dialog"
      footer={
        target !== null && (
          <>
            <button type="button" className="btn" onClick={onClose} disabled={busy} ref={cancelRef} data-testid="confirm-cancel">
              Cancel
            </button>
            <button
              type="button"
              className={`btn ${danger ? 'btn-danger' : 'btn-primary'}`}
              onClick={() => void confirm(target)}
              disabled={busy}
              data-testid="confirm-ok"
            >
              {busy ? 'Working…' : confirmLabel}
            </button>
          </>
        )
      }
    >
      {target !== null && (
        <div className="confirm-message" data-testid={testId}>
          <p>
            {message(target)}
            {irreversible && ' This cannot be undone.'}
          </p>
        </div>
      )}
      <ErrorBanner error={error} />
    </Modal>
  );
}
