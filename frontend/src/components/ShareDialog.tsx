import { useState, type FormEvent } from 'react';
import { endpoints, type CreatedShare, type Study } from '../lib/api';
import { formatDateTime, formatDicomDate, formatPersonName, formatRelative } from '../lib/format';
import { useAction } from '../lib/useAction';
import { CopyField, DialogButtons, ErrorBanner, Modal } from './ui';

const EXPIRY_CHOICES = [
  [24, '24 hours'],
  [72, '3 days'],
  [168, '7 days'],
  [720, '30 days'],
] as const;

/** Make a share link absolute so it can be pasted anywhere. */
export function absoluteUrl(url: string): string {
  try {
    return new URL(url, window.location.origin).href;
  } catch {
    return url;
  }
}

export function ShareDialog({ study, onClose }: { study: Study; onClose: () => void }) {
  const [hours, setHours] = useState<number>(72);
  const [note, setNote] = useState('');
  const { busy, error, run } = useAction();
  const [created, setCreated] = useState<CreatedShare | null>(null);

  function submit(e: FormEvent) {
    e.preventDefault();
    void run(async () => setCreated(await endpoints.createShare(study.study_uid, hours, note.trim())));
  }

  const name = formatPersonName(study.patient_name) || 'Unnamed patient';
  return (
    <Modal
      title="Share study"
      open
      onClose={onClose}
      testId="share-dialog"
      width={520}
      footer={
        created ? (
          <button type="button" className="btn btn-primary" onClick={onClose}>
            Done
          </button>
        ) : (
          <DialogButtons form="share-form" label="Create link" busyLabel="Creating…" busy={busy} onCancel={onClose} testId="share-create" />
        )
      }
    >
      <dl className="summary">
        <dt>Patient</dt>
        <dd>
          {name} <span className="muted mono">{study.patient_id}</span>
        </dd>
        <dt>Study</dt>
        <dd>
          {formatDicomDate(study.study_date)} · {(study.modalities ?? []).join(', ')} · {study.description || '—'}
        </dd>
      </dl>
      {created ? (
        <div className="share-result">
          <p>
            Anyone with this link can view the study until{' '}
            <strong>{formatDateTime(created.expires_at)}</strong> ({formatRelative(created.expires_at)}).
          </p>
          <CopyField value={absoluteUrl(created.url)} testId="share-url" />
          <p className="muted small">Links can be revoked at any time on the Shares page.</p>
        </div>
      ) : (
        <form id="share-form" onSubmit={submit}>
          <label className="field">
            <span className="field-label">Link expires after</span>
            <select className="input select" value={hours} onChange={(e) => setHours(Number(e.target.value))} data-testid="share-expiry">
              {EXPIRY_CHOICES.map(([h, label]) => (
                <option key={h} value={h}>
                  {label}
                </option>
              ))}
            </select>
          </label>
          <label className="field">
            <span className="field-label">
              Note <span className="muted">(optional, e.g. recipient or reason)</span>
            </span>
            <input className="input" value={note} maxLength={200} onChange={(e) => setNote(e.target.value)} data-testid="share-note" />
          </label>
          <ErrorBanner error={error} />
        </form>
      )}
    </Modal>
  );
}
