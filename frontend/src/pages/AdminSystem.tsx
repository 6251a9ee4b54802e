import { endpoints, type AuditEvent, type BackupInfo, type ComponentHealth, type DoctorCheck, type FhirPushInfo } from '../lib/api';
import { formatBytes, formatCount, formatDateTime, formatDuration } from '../lib/format';
import { Link } from '../lib/router';
import { useFetch } from '../lib/useFetch';
import { QueueSection } from '../components/QueueSection';
import { DataTable, none, type Column } from '../components/DataTable';
import { Badge, ErrorBanner, PageHeader, Spinner, type Tone } from '../components/ui';

const REFRESH_MS = 10_000;
const COMPONENT_LABELS: Record<string, string> = {
  nginx: 'Web server (nginx)',
  app: 'Application',
  orthanc: 'Image store (Orthanc)',
  queue: 'Task queue',
  receiver: 'DICOM receiver',
};
const COMPONENT_ORDER = ['nginx', 'app', 'orthanc', 'queue', 'receiver'];

/** Render a free-form "detail" value compactly. */
export function detailText(detail: unknown): string {
  if (detail == null || detail === '') return '';
  if (typeof detail === 'string') return detail;
  if (typeof detail === 'number' || typeof detail === 'boolean') return String(detail);
  if (Array.isArray(detail)) return detail.map(detailText).join(', ');
  if (typeof detail === 'object') {
    return Object.entries(detail as Record<string, unknown>)
      .map(([k, v]) => `${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`)
      .join(' · ');
  }
  return String(detail);
}

function statusTone(status: string | undefined): Tone {
  if (status === 'ok') return 'ok';
  if (status === 'degraded' || status === 'warning' || status === 'starting') return 'warn';
  return 'bad';
}

export function eventTone(event: string): Tone {
  if (/fail|denied|throttl|invalid|locked|reject|forbidden|error|revok/i.test(event)) return 'bad';
  if (/login|logout|refresh/i.test(event)) return 'info';
  return 'neutral';
}

/** A backup older than this is a warning (the doctor's backup check: a day plus slack). */
const BACKUP_WARN_AGE_S = 26 * 3600;

/** The last backup's result and age, and when the daily backup runs next. */
export function backupMetric(b: BackupInfo | undefined): { value: string; sub: string; tone: Tone } {
  const last = b?.last;
  const next = b?.daily
    ? `next ${formatDateTime(b.daily.next)} into ${b.daily.destination}${b.daily.remote ? `, then ${b.daily.remote}` : ''}`
    : 'daily backup off ([backup] destination)';
  if (!last) return { value: 'None yet', sub: next, tone: 'warn' };
  if (!last.ok) return { value: 'Failed', sub: `${last.error ?? 'unknown error'} · ${next}`, tone: 'bad' };
  const old = b?.age_s != null && b.age_s > BACKUP_WARN_AGE_S;
  return { value: `${formatDuration(b?.age_s)} ago`, sub: next, tone: old ? 'warn' : 'ok' };
}

/** The FHIR push's studies by state, and its latest failure's reason. */
export function fhirPushMetric(p: FhirPushInfo): { value: string; sub: string; tone: Tone } {
  const failed = p.counts.failed ?? 0;
  const pending = p.counts.pending ?? 0;
  const pushed = (p.counts.pushed ?? 0) + (p.counts.gone ?? 0);
  const latest = p.failures[0];
  const sub = latest
    ? `${latest.error ?? 'failed'} (study ${latest.study_uid})`
    : `${pending} waiting · to ${p.url}`;
  if (failed) return { value: `${failed} failed`, sub, tone: 'bad' };
  return { value: `${pushed} pushed`, sub, tone: latest ? 'warn' : 'ok' };
}

const CHECK_TONES: Record<DoctorCheck['status'], Tone> = { OK: 'ok', WARN: 'warn', FAIL: 'bad' };
const CHECK_COLUMNS: Column<DoctorCheck>[] = [
  { header: 'Check', cell: (c) => c.name, className: 'mono small' },
  { header: 'Result', cell: (c) => <Badge tone={CHECK_TONES[c.status] ?? 'bad'}>{c.status}</Badge> },
  { header: 'Finding', cell: (c) => c.message, className: 'small' },
  { header: 'Fix', cell: (c) => c.fix || none, className: 'small' },
];
const EVENT_COLUMNS: Column<AuditEvent>[] = [
  { header: 'Time', cell: (e) => formatDateTime(e.ts, true), className: 'nowrap mono small' },
  { header: 'Event', cell: (e) => <Badge tone={eventTone(e.event)}>{e.event}</Badge> },
  { header: 'User', cell: (e) => e.username || none },
  { header: 'Client', cell: (e) => e.client || none, className: 'mono small' },
  { header: 'Detail', cell: (e) => detailText(e.detail) || none, className: 'small detail-cell' },
];

/** The checks of `neuronova doctor`, run on opening the page and on demand (not polled:
 * each run opens a probe session and a DICOM association). */
function DoctorSection() {
  const doc = useFetch((signal) => endpoints.doctor(signal), 'doctor');
  return (
    <section className="section">
      <h2 className="section-title">
        Checks{' '}
        <button type="button" className="btn btn-sm" onClick={doc.reload} disabled={doc.busy} data-testid="doctor-run">
          {doc.busy ? <Spinner /> : null} Run checks
        </button>
        {doc.data && <span className="muted small"> took {doc.data.took_ms} ms, same as `neuronova doctor`</span>}
      </h2>
      <DataTable
        columns={CHECK_COLUMNS}
        rows={doc.data?.checks}
        rowKey={(c) => c.name}
        rowProps={(c) => ({ 'data-testid': 'doctor-row', 'data-status': c.status })}
        loading={doc.loading}
        loadingText="Running checks…"
        error={doc.error}
        onRetry={doc.reload}
        testId="doctor-table"
      />
    </section>
  );
}

export function AdminSystemPage() {
  const sys = useFetch((signal) => endpoints.system(signal), 'system', { intervalMs: REFRESH_MS });
  const audit = useFetch((signal) => endpoints.audit(50, signal), 'audit', { intervalMs: REFRESH_MS });
  const d = sys.data;
  const components = d ? Object.entries(d.health?.components ?? {}) : [];
  components.sort(
    ([a], [b]) =>
      (COMPONENT_ORDER.indexOf(a) + 1 || 99) - (COMPONENT_ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b),
  );
  const diskFreePct = d && d.disk?.total_bytes ? (d.disk.free_bytes / d.disk.total_bytes) * 100 : null;
  const diskTone: Tone = d?.disk?.warn_free_bytes
    ? d.disk.free_bytes < (d.disk.refuse_free_bytes ?? 0)
      ? 'bad'
      : d.disk.free_bytes < d.disk.warn_free_bytes
        ? 'warn'
        : 'ok'
    : diskFreePct == null
      ? 'neutral'
      : diskFreePct < 5
        ? 'bad'
        : diskFreePct < 15
          ? 'warn'
          : 'ok';
  const overallOk = d?.health?.status === 'ok';
  const lastMigration = d?.home?.migrations?.at(-1);

  return (
    <div className="page">
      <PageHeader
        title="System"
        subtitle={
          <>
            {d ? `Version ${d.version}` : 'Appliance health'}
            {lastMigration && (
              <span className="muted" data-testid="home-migration" title={lastMigration.name}>
                {' '}· home at migration {lastMigration.number} (by {lastMigration.version})
              </span>
            )}
            {sys.updatedAt && (
              <span className="muted"> · updated {formatDateTime(sys.updatedAt, true).slice(11)}, refreshes every 10 s</span>
            )}
          </>
        }
        actions={
          <button
            type="button"
            className="btn btn-sm"
            onClick={() => {
              sys.reload();
              audit.reload();
            }}
            disabled={sys.busy}
          >
            {sys.busy ? <Spinner /> : null} Refresh
          </button>
        }
      />
      <ErrorBanner error={sys.error} onRetry={sys.reload} />
      {sys.loading && !d && (
        <div className="card center">
          <Spinner /> Loading system status…
        </div>
      )}
      {d && (
        <>
          {!!d.warnings?.length && (
            <div className="alert alert-warn" role="status" data-testid="system-warnings">
              <ul>
                {d.warnings.map((w) => (
                  <li key={w}>{w}</li>
                ))}
              </ul>
            </div>
          )}
          <div className={`status-banner ${overallOk ? 'is-ok' : 'is-bad'}`} data-testid="system-status">
            <span className={`dot dot-${overallOk ? 'ok' : 'bad'}`} aria-hidden="true" />
            <strong>{overallOk ? 'All services are running' : 'Service degraded'}</strong>
            {!overallOk && (
              <span className="muted">
                {' '}
                — {components.filter(([, c]) => c.status !== 'ok').map(([n]) => COMPONENT_LABELS[n] ?? n).join(', ') || d.health?.status}
              </span>
            )}
          </div>

          <div className="metrics">
            <Metric label="Queue pending" value={formatCount(d.queue?.pending)} tone={d.queue?.pending ? 'info' : 'neutral'} testId="metric-queue" />
            <Metric
              label="Oldest task"
              value={d.queue?.oldest_task_age_s == null ? 'None waiting' : formatDuration(d.queue.oldest_task_age_s)}
              tone={d.queue?.oldest_task_age_s != null && d.queue.oldest_task_age_s > 300 ? 'warn' : 'neutral'}
              testId="metric-oldest"
            />
            <Metric
              label="Free disk"
              value={formatBytes(d.disk?.free_bytes)}
              sub={
                d.disk
                  ? `${diskFreePct == null ? '' : `${diskFreePct.toFixed(0)}% free of ${formatBytes(d.disk.total_bytes)}`} · ${d.disk.path}`
                  : undefined
              }
              tone={diskTone}
              bar={diskFreePct == null ? undefined : 100 - diskFreePct}
              testId="metric-disk"
            />
            <Metric
              label="Failed ingests"
              value={formatCount(d.ingest?.failed)}
              tone={d.ingest?.failed ? 'bad' : 'ok'}
              testId="metric-failed"
            />
            <Metric label="Last backup" {...backupMetric(d.backup)} testId="metric-backup" />
            {d.fhir_push && <Metric label="FHIR push" {...fhirPushMetric(d.fhir_push)} testId="metric-fhir-push" />}
          </div>

          <section className="card">
            <h2 className="card-title">Components</h2>
            <div className="components" data-testid="components">
              {components.map(([name, c]) => (
                <ComponentCard key={name} name={name} c={c} />
              ))}
            </div>
          </section>
        </>
      )}

      <QueueSection />

      <DoctorSection />

      <section className="section">
        <h2 className="section-title">
          Recent security events{' '}
          <Link to="/admin/audit" className="small" data-testid="audit-trail-link">
            Full audit trail
          </Link>
        </h2>
        <DataTable
          columns={EVENT_COLUMNS}
          rows={audit.data?.items}
          rowKey={(e, i) => `${e.ts}-${i}`}
          rowProps={() => ({ 'data-testid': 'audit-row' })}
          loading={audit.loading}
          empty="No events recorded."
          error={audit.error}
          onRetry={audit.reload}
          testId="audit-table"
        />
      </section>
    </div>
  );
}

function Metric({
  label,
  value,
  sub,
  tone,
  bar,
  testId,
}: {
  label: string;
  value: string;
  sub?: string;
  tone: Tone;
  bar?: number;
  testId?: string;
}) {
  return (
    <div className={`metric metric-${tone}`} data-testid={testId}>
      <div className="metric-label">{label}</div>
      <div className="metric-value">{value}</div>
      {bar != null && (
        <div className="meter" aria-hidden="true">
          <span style={{ width: `${Math.min(100, Math.max(0, bar))}%` }} />
        </div>
      )}
      {sub && <div className="metric-sub" title={sub}>{sub}</div>}
    </div>
  );
}

function ComponentCard({ name, c }: { name: string; c: ComponentHealth }) {
  const detail = detailText(c.detail);
  const tone = statusTone(c.status);
  return (
    <div className={`component component-${tone}`} data-testid="component" data-component={name} data-status={c.status}>
      <div className="component-head">
        <span className="component-name">{COMPONENT_LABELS[name] ?? name}</span>
        <Badge tone={tone}>{c.status === 'ok' ? 'OK' : c.status || 'unknown'}</Badge>
      </div>
      {detail && (
        <div className="component-detail" title={detail}>
          {detail}
        </div>
      )}
    </div>
  );
}
