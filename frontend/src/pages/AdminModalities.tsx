import { useState, type FormEvent } from 'react';
import { endpoints, type Modality } from '../lib/api';
import { formatDateTime } from '../lib/format';
import { useAction } from '../lib/useAction';
import { useFetch } from '../lib/useFetch';
import { ConfirmAction } from '../components/ConfirmAction';
import { actionsColumn, DataTable, none, type Column } from '../components/DataTable';
import { ErrorBanner, PageHeader } from '../components/ui';

/** DICOM AE title (PS3.5 table 6.2-1, AE): 1-16 chars, default repertoire, no backslash. */
export function aeTitleProblem(ae: string): string | null {
  if (!ae.trim()) return 'Enter the AE title.';
  if (ae.length > 16) return 'An AE title has at most 16 characters.';
  if (!/^[\x20-\x7e]+$/.test(ae) || ae.includes('\\')) return 'Use plain ASCII letters, digits and symbols (no backslash).';
  return null;
}

/** The modalities' columns; the last one's button asks to remove that modality. */
const modalityColumns = (onRemove: (m: Modality) => void): Column<Modality>[] => [
  { header: 'AE title', cell: (m) => m.ae_title, className: 'mono strong' },
  { header: 'Host', cell: (m) => m.host || <span className="muted">any host</span>, className: 'mono' },
  { header: 'Description', cell: (m) => m.description || none },
  { header: 'Registered', cell: (m) => formatDateTime(m.created_at), className: 'nowrap' },
  actionsColumn((m) => (
    <button type="button" className="btn btn-sm btn-danger-outline" onClick={() => onRemove(m)} data-testid="modality-delete">
      Remove
    </button>
  )),
];

export function AdminModalitiesPage() {
  const { data, error, loading, reload } = useFetch((signal) => endpoints.modalities(signal), 'modalities');
  const [ae, setAe] = useState('');
  const [host, setHost] = useState('');
  const [description, setDescription] = useState('');
  const { busy, error: formError, setError: setFormError, run } = useAction();
  const [deleting, setDeleting] = useState<Modality | null>(null);

  async function add(e: FormEvent) {
    e.preventDefault();
    const title = ae.trim();
    const problem = aeTitleProblem(title);
    if (problem) {
      setFormError(problem);
      return;
    }
    const body: { ae_title: string; host?: string; description?: string } = { ae_title: title };
    if (host.trim()) body.host = host.trim();
    if (description.trim()) body.description = description.trim();
    if (!(await run(() => endpoints.createModality(body)))) return;
    setAe('');
    setHost('');
    setDescription('');
    reload();
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

      <DataTable
        columns={modalityColumns(setDeleting)}
        rows={data?.items}
        rowKey={(m) => m.ae_title}
        rowProps={(m) => ({ 'data-testid': 'modality-row', 'data-ae-title': m.ae_title })}
        loading={loading}
        empty="No modalities registered."
        testId="modalities-table"
      />
      <ConfirmAction
        target={deleting}
        title="Remove modality"
        message={(m) => (
          <>
            <strong className="mono">{m.ae_title}</strong> will no longer be able to send studies.
            {items.length === 1 && ' It is the last registered modality: afterwards any device will be accepted again.'}
          </>
        )}
        confirmLabel="Remove"
        onConfirm={(m) => endpoints.deleteModality(m.ae_title)}
        onDone={reload}
        onClose={() => setDeleting(null)}
      />
    </div>
  );
}
