// DataTable rendered into happy-dom: the table's semantics and each state of a list.
import { act, type ReactNode } from 'react';
import { createRoot, type Root } from 'react-dom/client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from '../lib/api';
import { actionsColumn, DataTable, type Column } from './DataTable';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

interface Fruit {
  name: string;
  count: number;
}

const COLUMNS: Column<Fruit>[] = [
  { header: 'Name', cell: (f) => f.name, className: 'strong' },
  { header: 'Count', cell: (f) => f.count, className: 'num mono' },
  actionsColumn((f) => <button type="button">Eat {f.name}</button>),
];

let root: Root | null = null;
let container: HTMLElement;

async function render(node: ReactNode) {
  container = document.createElement('div');
  document.body.appendChild(container);
  await act(async () => {
    root = createRoot(container);
    root.render(node);
  });
}

afterEach(async () => {
  await act(async () => root?.unmount());
  root = null;
  document.body.innerHTML = '';
});

const texts = (selector: string) => [...container.querySelectorAll(selector)].map((el) => el.textContent);

describe('DataTable', () => {
  it('draws a real table: column headers, one row per item, cells with their class', async () => {
    const rows = [
      { name: 'apple', count: 3 },
      { name: 'pear', count: 12 },
    ];
    await render(
      <DataTable
        columns={COLUMNS}
        rows={rows}
        rowKey={(f) => f.name}
        rowProps={(f) => ({ 'data-testid': 'fruit-row', 'data-name': f.name })}
        loading={false}
        empty="No fruit."
        testId="fruit"
      />,
    );
    const table = container.querySelector('table[data-testid="fruit"]')!;
    expect([...table.querySelectorAll('thead th')].map((th) => th.getAttribute('scope'))).toEqual(['col', 'col', 'col']);
    expect(texts('thead th')).toEqual(['Name', 'Count', 'Actions']);
    expect(table.querySelector('thead th .sr-only')!.textContent).toBe('Actions');
    // Headers take their cells' layout classes (alignment, width), not their text style.
    expect([...table.querySelectorAll('thead th')].map((th) => th.className)).toEqual(['', 'num', 'col-actions']);
    expect(texts('tbody tr[data-testid="fruit-row"] td:first-child')).toEqual(['apple', 'pear']);
    expect(container.querySelector('tr[data-name="pear"] td.num.mono')!.textContent).toBe('12');
    expect(container.querySelector('tr[data-name="pear"] td.col-actions button')!.textContent).toBe('Eat pear');
    expect(container.textContent).not.toContain('No fruit.');
    expect(container.querySelector('[role="alert"]')).toBeNull();
  });

  it('shows a spinner row until the rows come, then the empty state', async () => {
    const table = (rows: Fruit[] | null, loading: boolean) => (
      <DataTable columns={COLUMNS} rows={rows} rowKey={(f) => f.name} loading={loading} loadingText="Picking…" empty="No fruit." />
    );
    await render(table(null, true));
    const only = container.querySelector('tbody tr.empty-row td')!;
    expect(only.getAttribute('colspan')).toBe('3');
    expect(only.textContent).toContain('Picking…');
    expect(only.querySelector('[role="status"]')).not.toBeNull();
    await act(async () => root!.render(table([], false)));
    expect(texts('tbody tr')).toEqual(['No fruit.']);
  });

  it('shows a failed load above the table with a Retry button that reloads', async () => {
    const retry = vi.fn();
    await render(
      <DataTable
        columns={COLUMNS}
        rows={null}
        rowKey={(f) => f.name}
        loading={false}
        empty="No fruit."
        error={new ApiError(503, { status: 503, error: 'unavailable', message: 'The store is not answering.' })}
        onRetry={retry}
      />,
    );
    const alert = container.querySelector('[role="alert"]')!;
    expect(alert.textContent).toContain('The store is not answering.');
    // An error is not an empty list.
    expect(container.querySelector('tbody')!.textContent).toBe('');
    await act(async () => alert.querySelector('button')!.click());
    expect(retry).toHaveBeenCalledOnce();
  });

  it('dims the rows during a refresh, marks the sorted column and pages below the table', async () => {
    const onPage = vi.fn();
    const sorted: Column<Fruit>[] = [{ ...COLUMNS[0], sort: 'ascending', className: 'strong col-name' }, COLUMNS[1]];
    await render(
      <DataTable
        columns={sorted}
        rows={[{ name: 'fig', count: 1 }]}
        rowKey={(f) => f.name}
        loading={false}
        busy
        className="fruits"
        pagination={{ page: 2, pages: 3, total: 120, size: 50, sizes: [50], onPage, onSize: () => undefined, noun: 'fruits' }}
      />,
    );
    expect(container.querySelector('.table-wrap')!.classList.contains('is-busy')).toBe(true);
    expect(container.querySelector('table')!.className).toBe('table fruits');
    const th = container.querySelector('thead th')!;
    expect(th.getAttribute('aria-sort')).toBe('ascending');
    expect(th.className).toBe('col-name');
    expect(container.querySelector('[data-testid="page-range"]')!.textContent).toContain('51–100 of 120 fruits');
    await act(async () => container.querySelector<HTMLButtonElement>('[data-testid="page-next"]')!.click());
    expect(onPage).toHaveBeenCalledWith(3);
  });
});
