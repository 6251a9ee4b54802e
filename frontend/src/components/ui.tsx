import { useEffect, useId, useRef, useState, type ReactNode } from 'react';
import { ApiError } from '../lib/api';

export function ErrorBanner({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  if (!error) return null;
  const message =
    error instanceof ApiError || error instanceof Error ? error.message : String(error);
  return (
    <div className="alert alert-error" role="alert">
      <span>{message}</span>
      {onRetry && (
        <button type="button" className="btn btn-sm" onClick={onRetry}>
          Retry
        </button>
      )}
    </div>
  );
}

export function Spinner({ label = 'Loading' }: { label?: string }) {
  return <span className="spinner" role="status" aria-label={label} />;
}

export function PageHeader({
  title,
  subtitle,
  actions,
}: {
  title: string;
  subtitle?: ReactNode;
  actions?: ReactNode;
}) {
  return (
    <div className="page-header">
      <div>
        <h1>{title}</h1>
        {subtitle && <p className="page-subtitle">{subtitle}</p>}
      </div>
      {actions && <div className="page-actions">{actions}</div>}
    </div>
  );
}

export type Tone = 'ok' | 'bad' | 'warn' | 'neutral' | 'info';

export function Badge({ tone = 'neutral', children, title }: { tone?: Tone; children: ReactNode; title?: string }) {
  return (
    <span className={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}

/** A modal dialog on the native <dialog> element (focus trap from the browser; Escape closes). */
export function Modal({
  title,
  open,
  onClose,
  children,
  footer,
  testId,
  width = 480,
}: {
  title: string;
  open: boolean;
  onClose: () => void;
  children: ReactNode;
  footer?: ReactNode;
  testId?: string;
  width?: number;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) {
      if (typeof d.showModal === 'function') d.showModal();
      else d.setAttribute('open', '');
    } else if (!open && d.open) {
      if (typeof d.close === 'function') d.close();
      else d.removeAttribute('open');
    }
  }, [open]);
  return (
    <dialog
      ref={ref}
      className="modal"
      style={{ width: `min(${width}px, calc(100vw - 32px))` }}
      aria-labelledby={titleId}
      data-testid={testId}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      onKeyDown={(e) => {
        // Escape closes through onClose (the browser's own cancel is then not fired).
        if (e.key === 'Escape') {
          e.preventDefault();
          onClose();
        }
      }}
      onClick={(e) => {
        // A click on the backdrop (the dialog element itself) closes.
        if (e.target === ref.current) onClose();
      }}
    >
      {open && (
        <div className="modal-inner">
          <div className="modal-header">
            <h2 id={titleId}>{title}</h2>
            <button type="button" className="icon-btn" aria-label="Close" onClick={onClose}>
              ×
            </button>
          </div>
          <div className="modal-body">{children}</div>
          {footer && <div className="modal-footer">{footer}</div>}
        </div>
      )}
    </dialog>
  );
}

/** A toolbar's drop-down filter: choices are values, or [value, label] pairs; `all`
 * labels a first choice "" that means no filter. */
export function FilterSelect({
  label,
  value,
  choices,
  all,
  onChange,
  testId,
}: {
  label: string;
  value: string;
  choices: readonly (string | readonly [string, string])[];
  all?: string;
  onChange: (value: string) => void;
  testId?: string;
}) {
  return (
    <select className="input select" value={value} onChange={(e) => onChange(e.target.value)} aria-label={label} data-testid={testId}>
      {all && <option value="">{all}</option>}
      {choices.map((c) => {
        const [v, text] = typeof c === 'string' ? [c, c] : c;
        return (
          <option key={v} value={v}>
            {text}
          </option>
        );
      })}
    </select>
  );
}

/** A form dialog's buttons: Cancel, and the submit button of `form` (its busy wording while it runs). */
export function DialogButtons({
  form,
  label,
  busyLabel,
  busy,
  onCancel,
  testId,
}: {
  form: string;
  label: string;
  busyLabel: string;
  busy: boolean;
  onCancel: () => void;
  testId?: string;
}) {
  return (
    <>
      <button type="button" className="btn" onClick={onCancel} disabled={busy}>
        Cancel
      </button>
      <button type="submit" form={form} className="btn btn-primary" disabled={busy} data-testid={testId}>
        {busy ? busyLabel : label}
      </button>
    </>
  );
}

/** Copy text to the clipboard; works on plain-HTTP LAN origins too (no secure context). */
export async function copyText(text: string): Promise<boolean> {
  try {
    if (window.isSecureContext && navigator.clipboard) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall through to the legacy path
  }
  const ta = document.createElement('textarea');
  ta.value = text;
  ta.setAttribute('readonly', '');
  ta.style.position = 'fixed';
  ta.style.opacity = '0';
  // Inside a modal <dialog>, only its subtree is interactive: append there.
  (document.querySelector('dialog[open]') ?? document.body).appendChild(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  ta.remove();
  return ok;
}

export function CopyField({ value, testId }: { value: string; testId?: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');
  const inputRef = useRef<HTMLInputElement>(null);
  async function copy() {
    const ok = await copyText(value);
    setState(ok ? 'copied' : 'failed');
    if (!ok) inputRef.current?.select();
    window.setTimeout(() => setState('idle'), 2500);
  }
  return (
    <div className="copy-field">
      <input
        ref={inputRef}
        className="input mono"
        readOnly
        value={value}
        onFocus={(e) => e.currentTarget.select()}
        data-testid={testId}
        aria-label="Link"
      />
      <button type="button" className="btn btn-primary" onClick={copy} data-testid="copy-button">
        {state === 'copied' ? 'Copied' : state === 'failed' ? 'Press Ctrl+C' : 'Copy'}
      </button>
    </div>
  );
}

export function EmptyRow({ colSpan, children }: { colSpan: number; children: ReactNode }) {
  return (
    <tr className="empty-row">
      <td colSpan={colSpan}>{children}</td>
    </tr>
  );
}
