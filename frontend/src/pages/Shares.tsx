import { useState } from 'react';
import { endpoints, type Share } from '../lib/api';
import { formatDateTime, formatRelative, parseTimestamp } from '../lib/format';
import { useFetch } from '../lib/useFetch';
import { ConfirmAction } from '../components/ConfirmAction';
import { actionsColumn, DataTable, none, type Column } from '../components/DataTable';
import { Badge, PageHeader } from '../components/ui';

type Filter = 'active' | 'all';

function shareState(s: Share, now: number): 'active' | 'revoked' | 'expired' {
  if (s.revoked) return 'revoked';
  const exp = parseTimestamp(s.expires_at);
  if (exp && exp.getTime() <= now) return 'expired';
  return 'active';
}

type ShareState = ReturnType<typeof shareState>;
type ShareRow = { share: Share; state: ShareState };

function stateBadge({ share, state }: ShareRow) {
  if (state === 'revoked') return <Badge tone="bad">Revoked</Badge>;
  if (state === 'expired') return <Badge tone="neutral">Expired</Badge>;
  return <Badge tone="ok">{`Active · ${formatRelative(share.expires_at).replace(/^in /, '')} left`}</Badge>;
}

/** The links' columns; an active link's last cell has its Revoke button. */
const shareColumns = (onRevoke: (s: Share) => void): Column<ShareRow>[] => [
  {
    header: 'Study UID',
    cell: ({ share }) => (
      <span className="truncate uid" title={share.study_uid}>
        {share.study_uid}
      </span>
    ),
    className: 'mono small',
  },
  { header: 'Note', cell: ({ share }) => share.note || none },
  { header: 'Created by', cell: ({ share }) => share.created_by },
  { header: 'Created', cell: ({ share }) => formatDateTime(share.created_at), className: 'nowrap' },
  {
    header: 'Expires',
    cell: ({ share }) => <span title={formatRelative(share.expires_at)}>{formatDateTime(share.expires_at)}</span>,
    className: 'nowrap',
  },
  { header: 'Status', cell: stateBadge },
  actionsColumn(({ share, state }) =>
    state === 'active' ? (
      <button type="button" className="btn btn-sm btn-danger-outline" onClick={() => onRevoke(share)} data-testid="revoke-share">
        Revoke
      </button>
    ) : null,
  ),
];

export function SharesPage() {
  const { data, error, loading, reload } = useFetch((signal) => endpoints.shares(signal), 'shares');
  const [filter, setFilter] = useState<Filter>('active');
  const [revoking, setRevoking] = useState<Share | null>(null);
  const now = Date.now();
  const items = (data?.items ?? [])
    .map((s) => ({ share: s, state: shareState(s, now) }))
    .filter((x) => filter === 'all' || x.state === 'active')
    .sort(
      (a, b) =>
        (parseTimestamp(b.share.created_at)?.getTime() ?? 0) - (parseTimestamp(a.share.created_at)?.getTime() ?? 0),
    );
  const activeCount = (data?.items ?? []).filter((s) => shareState(s, now) === 'active').length;

  return (
    <div className="page">
      <PageHeader
        title="Shared links"
        subtitle={data ? `${activeCount} active link${activeCount === 1 ? '' : 's'}` : 'Links that give view access to one study'}
        actions={
          <>
            <div className="segmented" role="group" aria-label="Show">
              <button type="button" className={filter === 'active' ? 'active' : ''} aria-pressed={filter === 'active'} onClick={() => setFilter('active')}>
                Active
              </button>
              <button type="button" className={filter === 'all' ? 'active' : ''} aria-pressed={filter === 'all'} onClick={() => setFilter('all')}>
                All
              </button>
            </div>
            <button type="button" className="btn btn-sm" onClick={reload}>
              Refresh
            </button>
          </>
        }
      />
      <DataTable
        columns={shareColumns(setRevoking)}
        rows={data ? items : undefined}
        rowKey={({ share }) => share.id}
        rowProps={({ share, state }) => ({
          'data-testid': 'share-row',
          'data-share-id': share.id,
          className: state !== 'active' ? 'row-dim' : '',
        })}
        loading={loading}
        empty={filter === 'active' ? 'No active links. Share a study from the worklist.' : 'No links have been created.'}
        error={error}
        onRetry={reload}
        testId="shares-table"
      />
      <ConfirmAction
        target={revoking}
        title="Revoke link"
        message={(s) => (
          <>
            The link{s.note ? ` “${s.note}”` : ''} to study <strong className="mono">{s.study_uid}</strong> stops working
            immediately.
          </>
        )}
        irreversible
        confirmLabel="Revoke link"
        onConfirm={(s) => endpoints.revokeShare(s.id)}
        onDone={reload}
        onClose={() => setRevoking(null)}
      />
    </div>
  );
}
