import { useState } from 'react';
import { endpoints, type Share } from '../lib/api';
import { formatDateTime, formatRelative, parseTimestamp } from '../lib/format';
import { useFetch } from '../lib/useFetch';
import { Badge, ConfirmDialog, EmptyRow, ErrorBanner, PageHeader, Spinner } from '../components/ui';

type Filter = 'active' | 'all';

function shareState(s: Share, now: number): 'active' | 'revoked' | 'expired' {
  if (s.revoked) return 'revoked';
  const exp = parseTimestamp(s.expires_at);
  if (exp && exp.getTime() <= now) return 'expired';
  return 'active';
}

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
      <ErrorBanner error={error} onRetry={reload} />
      <div className="table-wrap">
        <table className="table" data-testid="shares-table">
          <thead>
            <tr>
              <th scope="col">Study UID</th>
              <th scope="col">Note</th>
              <th scope="col">Created by</th>
              <th scope="col">Created</th>
              <th scope="col">Expires</th>
              <th scope="col">Status</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {loading && !data && (
              <EmptyRow colSpan={7}>
                <Spinner /> Loading…
              </EmptyRow>
            )}
            {data && items.length === 0 && (
              <EmptyRow colSpan={7}>
                {filter === 'active' ? 'No active links. Share a study from the worklist.' : 'No links have been created.'}
              </EmptyRow>
            )}
            {items.map(({ share: s, state }) => (
              <tr key={s.id} data-testid="share-row" data-share-id={s.id} className={state !== 'active' ? 'row-dim' : ''}>
                <td className="mono small">
                  <span className="truncate uid" title={s.study_uid}>
                    {s.study_uid}
                  </span>
                </td>
                <td>{s.note || <span className="muted">—</span>}</td>
                <td>{s.created_by}</td>
                <td className="nowrap">{formatDateTime(s.created_at)}</td>
                <td className="nowrap" title={formatRelative(s.expires_at)}>
                  {formatDateTime(s.expires_at)}
                </td>
                <td>
                  <Badge tone={state === 'active' ? 'ok' : state === 'revoked' ? 'bad' : 'neutral'}>
                    {state === 'active' ? `Active · ${formatRelative(s.expires_at).replace(/^in /, '')} left` : state === 'revoked' ? 'Revoked' : 'Expired'}
                  </Badge>
                </td>
                <td className="col-actions">
                  {state === 'active' && (
                    <button type="button" className="btn btn-sm btn-danger-outline" onClick={() => setRevoking(s)} data-testid="revoke-share">
                      Revoke
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <ConfirmDialog
        open={!!revoking}
        title="Revoke link"
        message={
          <p>
            The link{revoking?.note ? ` “${revoking.note}”` : ''} stops working immediately. This cannot be undone.
          </p>
        }
        confirmLabel="Revoke link"
        danger
        onConfirm={async () => {
          if (revoking) await endpoints.revokeShare(revoking.id);
          reload();
        }}
        onClose={() => setRevoking(null)}
      />
    </div>
  );
}
