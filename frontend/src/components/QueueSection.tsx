import { useState } from 'react';
import { endpoints, type FailedObject, type QueueKind, type TaskOutcome } from '../lib/api';
import { formatCount, formatDateTime, formatDuration } from '../lib/format';
import { useAction } from '../lib/useAction';
import { useFetch } from '../lib/useFetch';
import { actionsColumn, DataTable, type Column } from './DataTable';
import { Badge, ErrorBanner, Spinner } from './ui';

export const QUEUE_REFRESH_MS = 3_000;

const count = (n: number | null) => (n == null ? '—' : formatCount(n));

function lastRun(last: TaskOutcome | null) {
  if (!last) return <span className="muted">no run recorded</span>;
  return (
    <>
      <Badge tone={last.ok ? 'ok' : 'bad'}>{last.ok ? 'OK' : 'FAILED'}</Badge>{' '}
      <span className="nowrap">{formatDateTime(last.finished)}</span>
      {last.error && <div className="small">{last.error}</div>}
    </>
  );
}

const KIND_COLUMNS: Column<QueueKind>[] = [
  { header: 'Kind', cell: (k) => k.label },
  { header: 'Pending', cell: (k) => count(k.pending), className: 'num' },
  { header: 'Scheduled', cell: (k) => count(k.scheduled), className: 'num' },
  { header: 'Running', cell: (k) => count(k.running), className: 'num' },
  { header: 'Objects waiting', cell: (k) => count(k.waiting), className: 'num' },
  { header: 'Oldest waiting', cell: (k) => formatDuration(k.oldest_pending_age_s), className: 'num' },
  { header: 'Failed', cell: (k) => count(k.failed), className: 'num' },
  { header: 'Last run', cell: (k) => (k.periodic ? lastRun(k.last) : null), className: 'small' },
];

/** The queue monitor: tasks by kind, and the failed objects with their reason and a
 * retry button each (and one for all), refreshed every few seconds. */
export function QueueSection() {
  const queue = useFetch((signal) => endpoints.queue(signal), 'queue', { intervalMs: QUEUE_REFRESH_MS });
  const [retrying, setRetrying] = useState<string | null>(null);
  const [outcome, setOutcome] = useState<string | null>(null);
  const retrial = useAction();
  const q = queue.data;

  async function retry(which: { sop_uids: string[] } | { all: true }, key: string) {
    setRetrying(key);
    const queued = await retrial.run(async () => {
      const done = await endpoints.retryFailed(which);
      setOutcome(`Queued ${done.queued.length} object(s) again.`);
    });
    if (queued) queue.reload();
    setRetrying(null);
  }

  const failedColumns: Column<FailedObject>[] = [
    { header: 'Failed at', cell: (f) => formatDateTime(f.updated_at, true), className: 'nowrap mono small' },
    { header: 'SOP Instance UID', cell: (f) => f.sop_uid, className: 'mono small' },
    { header: 'Source', cell: (f) => f.source, className: 'small' },
    { header: 'Attempts', cell: (f) => count(f.attempts), className: 'num' },
    { header: 'Reason', cell: (f) => f.error, className: 'small detail-cell' },
    actionsColumn((f) => (
      <button
        type="button"
        className="btn btn-sm"
        onClick={() => retry({ sop_uids: [f.sop_uid] }, f.sop_uid)}
        disabled={retrying !== null}
        data-testid="retry-one"
      >
        {retrying === f.sop_uid ? <Spinner /> : null} Retry
      </button>
    )),
  ];

  return (
    <section className="section" data-testid="queue-section">
      <h2 className="section-title">
        Queue{' '}
        {q && (
          <span className="muted small">
            {q.workers ? `${q.workers} worker(s) running` : 'no worker running'} · {q.backend} · refreshes every{' '}
            {QUEUE_REFRESH_MS / 1000} s
          </span>
        )}
      </h2>
      <ErrorBanner error={queue.error} onRetry={queue.reload} />
      {q?.error && (
        <div className="alert alert-error" role="alert" data-testid="queue-error">
          {q.error}
        </div>
      )}
      <DataTable
        columns={KIND_COLUMNS}
        rows={q?.kinds}
        rowKey={(k) => k.kind}
        rowProps={(k) => ({ 'data-testid': 'queue-kind', 'data-kind': k.kind })}
        loading={queue.loading}
        testId="queue-table"
      />
      {!!q?.unclassified && <p className="muted small">{q.unclassified} more task(s) are counted but not read by kind.</p>}

      <h3 className="section-title">
        Failed objects{' '}
        <button
          type="button"
          className="btn btn-sm"
          onClick={() => retry({ all: true }, 'all')}
          disabled={!q?.failed_total || retrying !== null}
          data-testid="retry-all"
        >
          {retrying === 'all' ? <Spinner /> : null} Retry all{q?.failed_total ? ` (${formatCount(q.failed_total)})` : ''}
        </button>
        {outcome && (
          <span className="muted small" role="status" data-testid="retry-outcome">
            {' '}
            {outcome}
          </span>
        )}
      </h3>
      <DataTable
        columns={failedColumns}
        rows={q?.failed}
        rowKey={(f) => f.sop_uid}
        rowProps={(f) => ({ 'data-testid': 'failed-row', 'data-sop': f.sop_uid })}
        loading={queue.loading}
        empty="No failed object."
        error={retrial.error}
        testId="failed-table"
      />
      {q && q.failed_total > q.failed.length && (
        <p className="muted small">
          The newest {q.failed.length} of {formatCount(q.failed_total)} are listed; `neuronova ingest status --json` lists
          them all.
        </p>
      )}
    </section>
  );
}
