import { useState, type FormEvent } from 'react';
import { auditExportUrl, endpoints, type AuditEvent, type AuditQuery } from '../lib/api';
import { formatDateTime } from '../lib/format';
import { setSearchParams, useLocation } from '../lib/router';
import { useFetch } from '../lib/useFetch';
import { Badge, EmptyRow, ErrorBanner, PageHeader, Spinner } from '../components/ui';
import { detailText, eventTone } from './AdminSystem';

// The server's event kinds (appliance/security/audit.py EVENTS; tests/test_audit_events.py
// keeps the two lists equal); reads of patient data first.
export const AUDIT_EVENTS = [
  'study_read',
  'study_query',
  'share_opened',
  'login_ok',
  'login_failed',
  'login_throttled',
  'sso_login',
  'sso_refused',
  'smart_launch',
  'smart_refused',
  'logout',
  'token_rejected',
  'role_denied',
  'csrf_rejected',
  'refresh_reused',
  'admin_change',
  'share_created',
  'share_revoked',
  'object_held',
  'study_deleted',
];
const PERIODS: [string, string][] = [
  ['1h', 'Last hour'],
  ['24h', 'Last 24 hours'],
  ['7d', 'Last 7 days'],
  ['30d', 'Last 30 days'],
  ['all', 'Any time'],
];
const PAGE = 200;
const EXPORT_LIMIT = 10_000; // the server's most (appliance/web/admin.py)
const TEXT_FIELDS = ['user', 'study', 'patient'] as const;

/** The filters in the page's URL (``since`` defaults to 24h; ``all`` means any time). */
function readQuery(params: URLSearchParams): Required<Omit<AuditQuery, 'limit'>> {
  return {
    event: params.get('event') ?? '',
    user: params.get('user') ?? '',
    study: params.get('study') ?? '',
    patient: params.get('patient') ?? '',
    since: params.get('since') || '24h',
  };
}

/** The filters as the API takes them. */
function apiQuery(q: AuditQuery, limit: number): AuditQuery {
  return { ...q, since: q.since === 'all' ? '' : q.since, limit };
}

export function AdminAuditPage() {
  const { params } = useLocation();
  const q = readQuery(params);
  const [draft, setDraft] = useState({ user: q.user, study: q.study, patient: q.patient });
  const audit = useFetch((signal) => endpoints.auditSearch(apiQuery(q, PAGE), signal), JSON.stringify(q));
  const update = (patch: Partial<AuditQuery>) => setSearchParams({ ...q, ...patch });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    update({ user: draft.user.trim(), study: draft.study.trim(), patient: draft.patient.trim() });
  };
  const items = audit.data?.items ?? [];

  return (
    <div className="page page-wide">
      <PageHeader
        title="Audit trail"
        subtitle="Who read which patient's studies, searches, sign-ins and refused requests. Repeats are counted on one row."
        actions={
          <>
            <a className="btn btn-sm" href={auditExportUrl(apiQuery(q, EXPORT_LIMIT), 'csv')} download data-testid="audit-export-csv">
              Export CSV
            </a>
            <a className="btn btn-sm" href={auditExportUrl(apiQuery(q, EXPORT_LIMIT), 'json')} download data-testid="audit-export-json">
              Export JSON
            </a>
            <button type="button" className="btn btn-sm" onClick={audit.reload} disabled={audit.busy}>
              {audit.busy ? <Spinner /> : null} Refresh
            </button>
          </>
        }
      />
      <form className="toolbar" role="search" onSubmit={submit}>
        <select
          className="input select"
          value={q.event}
          onChange={(e) => update({ event: e.target.value })}
          aria-label="Event"
          data-testid="audit-event"
        >
          <option value="">All events</option>
          {AUDIT_EVENTS.map((name) => (
            <option key={name} value={name}>
              {name}
            </option>
          ))}
        </select>
        <select
          className="input select"
          value={q.since}
          onChange={(e) => update({ since: e.target.value })}
          aria-label="Period"
          data-testid="audit-since"
        >
          {PERIODS.map(([value, label]) => (
            <option key={value} value={value}>
              {label}
            </option>
          ))}
        </select>
        {TEXT_FIELDS.map((field) => (
          <input
            key={field}
            className="input"
            placeholder={{ user: 'User name', study: 'Study UID', patient: 'Patient ID' }[field]}
            value={draft[field]}
            onChange={(e) => setDraft({ ...draft, [field]: e.target.value })}
            aria-label={`Filter by ${field}`}
            data-testid={`audit-${field}`}
          />
        ))}
        <button type="submit" className="btn btn-sm btn-primary" data-testid="audit-apply">
          Apply
        </button>
      </form>
      <ErrorBanner error={audit.error} onRetry={audit.reload} />
      <div className="table-wrap">
        <table className="table" data-testid="audit-trail">
          <thead>
            <tr>
              <th scope="col">Last seen</th>
              <th scope="col">Event</th>
              <th scope="col">Count</th>
              <th scope="col">User</th>
              <th scope="col">Client</th>
              <th scope="col">Patient</th>
              <th scope="col">Study</th>
              <th scope="col">Detail</th>
            </tr>
          </thead>
          <tbody>
            {audit.loading && (
              <EmptyRow colSpan={8}>
                <Spinner /> Loading…
              </EmptyRow>
            )}
            {!audit.loading && items.length === 0 && <EmptyRow colSpan={8}>No events match.</EmptyRow>}
            {!audit.loading && items.map((e: AuditEvent) => <AuditRow key={`${e.id}-${e.ts}`} e={e} />)}
          </tbody>
        </table>
      </div>
      {items.length === PAGE && <p className="muted small">Showing the latest {PAGE}; narrow the filters or export for more.</p>}
    </div>
  );
}

function AuditRow({ e }: { e: AuditEvent }) {
  const { patient_name: name, ...rest } = (e.detail ?? {}) as Record<string, unknown>;
  return (
    <tr data-testid="audit-trail-row">
      <td className="nowrap mono small" title={e.last_ts && e.last_ts !== e.ts ? `first ${formatDateTime(e.ts, true)}` : undefined}>
        {formatDateTime(e.last_ts ?? e.ts, true)}
      </td>
      <td>
        <Badge tone={eventTone(e.event)}>{e.event}</Badge>
      </td>
      <td className="mono small">{e.count ?? 1}</td>
      <td>{e.username || <span className="muted">—</span>}</td>
      <td className="mono small">{e.client || <span className="muted">—</span>}</td>
      <td className="small">
        {e.patient_id || name ? `${e.patient_id ?? ''}${name ? ` (${String(name)})` : ''}` : <span className="muted">—</span>}
      </td>
      <td className="mono small detail-cell">{e.study_uid || <span className="muted">—</span>}</td>
      <td className="small detail-cell">{detailText(rest) || <span className="muted">—</span>}</td>
    </tr>
  );
}
