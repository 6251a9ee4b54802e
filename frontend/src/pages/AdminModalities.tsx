import { useState, type FormEvent } from 'react';
import { endpoints, type Modality } from '../lib/api';
import { formatDateTime } from '../lib/format';
import { useFetch } from '../lib/useFetch';
import { ConfirmDialog, EmptyRow, ErrorBanner, PageHeader, Spinner } from '../components/ui';

/** DICOM AE title (PS3.5 table 6.2-1, AE): 1-16 chars, default repertoire, no backslash. */
export function aeTitleProblem(ae: string): string | null {
  if (!ae.trim()) return 'Enter the AE title.';
  if (ae.length > 16) return 'An AE title has at most 16 characters.';
  if (!/^[\x20-\x7e]+$/.test(ae) || ae.includes('\\')) return 'Use plain ASCII letters, digits and symbols (no backslash).';
  return null;
}

export function AdminModalitiesPage() {
  const { data, error, loading, reload } = useFetch((signal) => endpoints.modalities(signal), 'modalities');
  const [ae, setAe] = useState('');
  const [host, setHost] = useState('');
  const [description, setDescription] = useState('');
  const [busy, setBusy] = useState(false);
  const [formError, setFormError] = useState<unknown>(null);
  const [deleting, setDeleting] = useState<Modality | null>(null);

  async function add(e: FormEvent) {
    e.preventDefault();
    const title = ae.trim();
    const problem = aeTitleProblem(title);
    if (problem) {
      setFormError(problem);
      return;
    }
    setBusy(true);
    setFormError(null);
    try {
      const body: { ae_title: string; host?: string; description?: string } = { ae_title: title };
      if (host.trim()) body.host = host.trim();
      if (description.trim()) body.description = description.trim();
      await endpoints.createModality(body);
      setAe('');
      setHost('');
      setDescription('');
      reload();
    } catch (err) {
      setFormError(err);
    } finally {
      setBusy(false);
    }
  }

  const items = data?.items ?? [];
  return (
    <div className="page">
      <PageHeader title="Modalities" subtitle="DICOM devices allowed to send studies to this appliance (C-STORE allow-list)" />
      {data?.open && (
        <div className="alert alert-warn" role="alert" data-testid="modalities-open-warning">
          <div>
            <strong>Any device can send studies.</strong> No modality is registered yet, so the DICOM receiver accepts
            every caller. Register your modalities below to restrict it.
          </div>
        </div>
      )}
      <ErrorBanner error={error} onRetry={reload} />

      <section className="card">
        <h2 className="card-title">Register a modality</h2>
        <form className="inline-form" onSubmit={add}>
          <label className="field">
            <span className="field-label">AE title</span>
            <input className="input mono" value={ae} maxLength={16} onChange={(e) => setAe(e.target.value)} placeholder="CT_SCANNER_1" spellCheck={false} data-testid="modality-ae" />
          </label>
          <label className="field">
            <span className="field-label">
              Host <span className="muted">(optional)</span>
            </span>
            <input className="input mono" value={host} onChange={(e) => setHost(e.target.value)} placeholder="192.168.1.20" spellCheck={false} data-testid="modality-host" />
          </label>
          <label className="field field-grow">
            <span className="field-label">
              Description <span className="muted">(optional)</span>
            </span>
            <input className="input" value={description} onChange={(e) => setDescription(e.target.value)} placeholder="Room 2 CT" data-testid="modality-description" />
          </label>
          <button type="submit" className="btn btn-primary" disabled={busy} data-testid="modality-add">
            {busy ? 'Adding…' : 'Add'}
          </button>
        </form>
        <ErrorBanner error={formError} />
      </section>

      <div className="table-wrap">
        <table className="table" data-testid="modalities-table">
          <thead>
            <tr>
              <th scope="col">AE title</th>
              <th scope="col">Host</th>
              <th scope="col">Description</th>
              <th scope="col">Registered</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {loading && !data && (
              <EmptyRow colSpan={5}>
                <Spinner /> Loading…
              </EmptyRow>
            )}
            {data && items.length === 0 && <EmptyRow colSpan={5}>No modalities registered.</EmptyRow>}
            {items.map((m) => (
              <tr key={m.ae_title} data-testid="modality-row" data-ae-title={m.ae_title}>
                <td className="mono strong">{m.ae_title}</td>
                <td className="mono">{m.host || <span className="muted">any host</span>}</td>
                <td>{m.description || <span className="muted">—</span>}</td>
                <td className="nowrap">{formatDateTime(m.created_at)}</td>
                <td className="col-actions">
                  <button type="button" className="btn btn-sm btn-danger-outline" onClick={() => setDeleting(m)} data-testid="modality-delete">
                    Remove
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <ConfirmDialog
        open={!!deleting}
        title="Remove modality"
        message={
          <p>
            <strong className="mono">{deleting?.ae_title}</strong> will no longer be able to send studies.
            {items.length === 1 && ' It is the last registered modality: afterwards any device will be accepted again.'}
          </p>
        }
        confirmLabel="Remove"
        danger
        onConfirm={async () => {
          if (deleting) await endpoints.deleteModality(deleting.ae_title);
          reload();
        }}
        onClose={() => setDeleting(null)}
      />
    </div>
  );
}
