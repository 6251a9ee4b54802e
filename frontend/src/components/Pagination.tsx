import { formatCount } from '../lib/format';

export function Pagination({
  page,
  pages,
  total,
  exact = true,
  size,
  sizes,
  onPage,
  onSize,
  noun = 'items',
}: {
  page: number;
  pages: number;
  total: number;
  /** false: `total` is a lower bound, shown as "1,050+". */
  exact?: boolean;
  size: number;
  sizes: number[];
  onPage: (page: number) => void;
  onSize: (size: number) => void;
  noun?: string;
}) {
  const first = (page - 1) * size + 1;
  const last = Math.min(total, page * size);
  return (
    <div className="pagination" data-testid="pagination">
      <div className="muted small" data-testid="page-range">
        {formatCount(first)}–{formatCount(last)} of {formatCount(total)}{exact ? '' : '+'} {noun}
      </div>
      <div className="pagination-controls">
        <label className="small muted page-size">
          Rows
          <select className="input select input-sm" value={size} onChange={(e) => onSize(Number(e.target.value))}>
            {sizes.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <div className="pager" role="group" aria-label="Pages">
          <button type="button" className="btn btn-sm" disabled={page <= 1} onClick={() => onPage(1)} aria-label="First page">
            «
          </button>
          <button type="button" className="btn btn-sm" disabled={page <= 1} onClick={() => onPage(page - 1)} data-testid="page-prev">
            ‹ Prev
          </button>
          <span className="page-of small">
            Page <strong>{formatCount(page)}</strong> of {formatCount(pages)}
          </span>
          <button type="button" className="btn btn-sm" disabled={page >= pages} onClick={() => onPage(page + 1)} data-testid="page-next">
            Next ›
          </button>
          <button type="button" className="btn btn-sm" disabled={page >= pages} onClick={() => onPage(pages)} aria-label="Last page">
            »
          </button>
        </div>
      </div>
    </div>
  );
}
