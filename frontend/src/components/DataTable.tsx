import type { ComponentProps, HTMLAttributes, ReactNode, ThHTMLAttributes } from 'react';
import { Pagination } from './Pagination';
import { EmptyRow, ErrorBanner, Spinner } from './ui';

/** One column, declared once: its header and how a row's cell is drawn. */
export interface Column<T> {
  header: ReactNode;
  cell: (row: T) => ReactNode;
  /** Class of the column's cells, e.g. "num" (right-aligned figures) or "mono small". */
  className?: string;
  /** aria-sort of a sortable column (its header then holds the sort button). */
  sort?: ThHTMLAttributes<HTMLTableCellElement>['aria-sort'];
}

/** A cell's mark for "no value". */
export const none = <span className="muted">—</span>;

type RowAttributes = HTMLAttributes<HTMLTableRowElement> & Record<`data-${string}`, string | undefined>;

/** The last column of a table with row buttons: a header only screen readers read. */
export function actionsColumn<T>(cell: (row: T) => ReactNode): Column<T> {
  return { header: <span className="sr-only">Actions</span>, cell, className: 'col-actions' };
}

/** The header shares its cells' layout classes: "num" (alignment) and "col-*" (width, hiding). */
function headerClass<T>(c: Column<T>): string | undefined {
  const layout = (c.className ?? '').split(' ').filter((name) => name === 'num' || name.startsWith('col-'));
  return layout.length ? layout.join(' ') : undefined;
}

/**
 * Every list of the app: an error banner (with Retry) above a real <table>, a spinner row
 * while the first load runs, an empty-state row, one row per item, and the pager below
 * when the list is paged. `rows` is null/undefined until the data has come.
 */
export function DataTable<T>({
  columns,
  rows,
  rowKey,
  rowProps,
  loading,
  loadingText = 'Loading…',
  empty,
  error,
  onRetry,
  busy,
  className,
  pagination,
  testId,
}: {
  columns: Column<T>[];
  rows: T[] | null | undefined;
  rowKey: (row: T, index: number) => string;
  /** Attributes of each row (data-testid, data-status, className, ...). */
  rowProps?: (row: T) => RowAttributes;
  loading: boolean;
  loadingText?: ReactNode;
  /** Shown when the list is empty; nothing when omitted. */
  empty?: ReactNode;
  /** A failed load, shown above the table (with a Retry button when `onRetry` is given). */
  error?: unknown;
  onRetry?: () => void;
  /** A refresh is running: the rows shown are dimmed. */
  busy?: boolean;
  /** Extra class of the <table> (e.g. "worklist"). */
  className?: string;
  /** The pager under the table, for a paged list. */
  pagination?: ComponentProps<typeof Pagination>;
  testId?: string;
}) {
  return (
    <>
      <ErrorBanner error={error} onRetry={onRetry} />
      <div className={`table-wrap${busy && rows ? ' is-busy' : ''}`}>
        <table className={className ? `table ${className}` : 'table'} data-testid={testId}>
          <thead>
            <tr>
              {columns.map((c, i) => (
                <th key={i} scope="col" className={headerClass(c)} aria-sort={c.sort}>
                  {c.header}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {loading && !rows && (
              <EmptyRow colSpan={columns.length}>
                <Spinner /> {loadingText}
              </EmptyRow>
            )}
            {rows && rows.length === 0 && empty && <EmptyRow colSpan={columns.length}>{empty}</EmptyRow>}
            {rows?.map((row, i) => (
              <tr key={rowKey(row, i)} {...rowProps?.(row)}>
                {columns.map((c, j) => (
                  <td key={j} className={c.className}>
                    {c.cell(row)}
                  </td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {pagination && <Pagination {...pagination} />}
    </>
  );
}
