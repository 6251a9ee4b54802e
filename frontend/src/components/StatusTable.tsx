import type { HTMLAttributes, ReactNode } from 'react';
import { EmptyRow, Spinner } from './ui';

/** One column: its header and how a row's cell is drawn. */
export interface Column<T> {
  header: ReactNode;
  cell: (row: T) => ReactNode;
  /** Class of the column's cells, e.g. "num" (right-aligned figures) or "mono small". */
  className?: string;
}

type RowAttributes = HTMLAttributes<HTMLTableRowElement> & Record<`data-${string}`, string | undefined>;

/**
 * The System page's tables (checks, queue, failures, events): a header, a spinner row
 * while the first load runs, an empty-state row, then one row per item.
 */
export function StatusTable<T>({
  columns,
  rows,
  rowKey,
  rowProps,
  loading,
  loadingText = 'Loading…',
  empty,
  testId,
}: {
  columns: Column<T>[];
  rows: T[] | null | undefined;
  rowKey: (row: T, index: number) => string;
  /** Attributes of each row (data-testid, data-status, ...). */
  rowProps?: (row: T) => RowAttributes;
  loading: boolean;
  loadingText?: ReactNode;
  /** Shown when the list is empty; nothing when omitted. */
  empty?: ReactNode;
  testId?: string;
}) {
  return (
    <div className="table-wrap">
      <table className="table" data-testid={testId}>
        <thead>
          <tr>
            {columns.map((c, i) => (
              <th key={i} scope="col" className={c.className?.includes('num') ? 'num' : undefined}>
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
  );
}
