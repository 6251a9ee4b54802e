import { useState, type FormEvent } from 'react';
import { auditExportUrl, endpoints, type AuditEvent, type AuditQuery } from '../lib/api';
import { formatDateTime } from '../lib/format';
import { setSearchParams, useLocation } from '../lib/router';
import { useFetch } from '../lib/useFetch';
import { DataTable, none, type Column } from '../components/DataTable';
import { Badge, FilterSelect, PageHeader, Spinner } from '../components/ui';
import { detailText, eventTone } from './AdminSystem';

// The server's event kinds (appliance/security/audit.py EVENTS; tests/security/test_audit_events.py
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

/** "ID (Name)" of the event's patient, from whichever of the two it recorded. */
function patientText(e: AuditEvent): string {
  const name = (e.detail as Record<string, unknown> | null)?.patient_name;
  return e.patient_id || name ? `${e.patient_id ?? ''}${name ? ` (${String(name)})` : ''}` : '';
}

/** The event's detail without the patient's name (shown in the Patient column). */
function otherDetail(e: AuditEvent): string {
  const { patient_name: _name, ...rest } = (e.detail ?? {}) as Record<string, unknown>;
  return detailText(rest);
}

const AUDIT_COLUMNS: Column<AuditEvent>[] = [
  {
    header: 'Last seen',
    cell: (e) => (
      <span title={e.last_ts && e.last_ts !== e.ts ? `first ${formatDateTime(e.ts, true)}` : undefined}>
        {formatDateTime(e.last_ts ?? e.ts, true)}
      </span>
    ),
    className: 'nowrap mono small',
  },
  { header: 'Event', cell: (e) => <Badge tone={eventTone(e.event)}>{e.event}</Badge> },
  { header: 'Count', cell: (e) => e.count ?? 1, className: 'mono small' },
  { header: 'User', cell: (e) => e.username || none },
  { header: 'Client', cell: (e) => e.client || none, className: 'mono small' },
  { header: 'Patient', cell: (e) => patientText(e) || none, className: 'small' },
  { header: 'Study', cell: (e) => e.study_uid || none, className: 'mono small detail-cell' },
  { header: 'Detail', cell: (e) => otherDetail(e) || none, className: 'small detail-cell' },
];

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
        <FilterSelect label="Event" value={q.event} choices={AUDIT_EVENTS} all="All events" onChange={(event) => update({ event })} testId="audit-event" />
        <FilterSelect label="Period" value={q.since} choices={PERIODS} onChange={(since) => update({ since })} testId="audit-since" />
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
      <DataTable
        columns={AUDIT_COLUMNS}
        rows={audit.loading ? null : audit.data?.items}
        rowKey={(e) => `${e.id}-${e.ts}`}
        rowProps={() => ({ 'data-testid': 'audit-trail-row' })}
        loading={audit.loading}
        empty="No events match."
        error={audit.error}
        onRetry={audit.reload}
        testId="audit-trail"
      />
      {items.length === PAGE && <p className="muted small">Showing the latest {PAGE}; narrow the filters or export for more.</p>}
    </div>
  );
}
