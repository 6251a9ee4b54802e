import { Fragment, useEffect, useState, type MouseEvent } from 'react';
import { endpoints, viewerUrl, type Study } from '../lib/api';
import { canShare, isAdmin, useAuth } from '../lib/auth';
import {
  dateToDicom,
  dicomDateToIso,
  formatCount,
  formatDateTime,
  formatDicomDate,
  formatPersonName,
  isoDateToDicom,
} from '../lib/format';
import { setSearchParams, useLocation } from '../lib/router';
import { useDebounced, useFetch } from '../lib/useFetch';
import { ConfirmAction } from '../components/ConfirmAction';
import { actionsColumn, DataTable, none, type Column } from '../components/DataTable';
import { FilterSelect, Spinner } from '../components/ui';
import { ShareDialog } from '../components/ShareDialog';

const MODALITIES = ['CT', 'MR', 'CR', 'DX', 'MG', 'US', 'XA', 'RF', 'NM', 'PT', 'OT'];
const PAGE_SIZES = [25, 50, 100];
const DEFAULT_SORT = '-study_date';
const SORT_KEYS = ['study_date', 'patient_name', 'patient_id', 'modalities', 'description'] as const;
type SortKey = (typeof SORT_KEYS)[number];

interface Filters {
  q: string;
  patient: string; // exact Patient ID (an EHR's SMART launch opens the worklist with it)
  modality: string;
  from: string; // YYYYMMDD
  to: string; // YYYYMMDD
  sort: string;
  page: number;
  size: number;
}

function readFilters(params: URLSearchParams): Filters {
  const sort = params.get('sort') ?? DEFAULT_SORT;
  const size = Number(params.get('size'));
  const page = Number(params.get('page'));
  const date = (v: string | null) => (v && /^\d{8}$/.test(v) ? v : '');
  return {
    q: params.get('q') ?? '',
    patient: params.get('patient') ?? '',
    modality: params.get('modality') ?? '',
    from: date(params.get('from')),
    to: date(params.get('to')),
    sort: SORT_KEYS.includes(sort.replace(/^-/, '') as SortKey) ? sort : DEFAULT_SORT,
    page: Number.isInteger(page) && page > 0 ? page : 1,
    size: PAGE_SIZES.includes(size) ? size : 50,
  };
}

function writeFilters(f: Filters) {
  setSearchParams({
    q: f.q.trim(),
    patient: f.patient,
    modality: f.modality,
    from: f.from,
    to: f.to,
    sort: f.sort === DEFAULT_SORT ? '' : f.sort,
    page: f.page > 1 ? f.page : '',
    size: f.size === 50 ? '' : f.size,
  });
}

function daysAgo(n: number): string {
  const d = new Date();
  d.setDate(d.getDate() - n);
  return dateToDicom(d);
}

export function WorklistPage() {
  const { user } = useAuth();
  const { params } = useLocation();
  const filters = readFilters(params);
  const [search, setSearch] = useState(filters.q);
  const debounced = useDebounced(search, 300);
  const [shareStudy, setShareStudy] = useState<Study | null>(null);
  const [deleting, setDeleting] = useState<Study | null>(null);

  // Debounced search box -> URL (first page).
  useEffect(() => {
    if (debounced.trim() !== filters.q.trim()) writeFilters({ ...filters, q: debounced, page: 1 });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [debounced]);

  // Back/forward or "Clear": the URL wins over the box.
  useEffect(() => {
    if (filters.q.trim() !== search.trim() && filters.q.trim() !== debounced.trim()) setSearch(filters.q);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [filters.q]);

  const query = {
    q: filters.q.trim(),
    patient_id: filters.patient,
    modality: filters.modality,
    date_from: filters.from,
    date_to: filters.to,
    sort: filters.sort,
    limit: filters.size,
    offset: (filters.page - 1) * filters.size,
  };
  const key = JSON.stringify(query);
  const { data, error, loading, busy, updatedAt, reload } = useFetch(
    (signal) => endpoints.studies(query, signal),
    key,
    { intervalMs: 15000 },
  );

  const update = (patch: Partial<Filters>) => writeFilters({ ...filters, page: 1, ...patch });
  const total = data?.total ?? 0;
  const exact = data?.total_exact ?? true; // false: "1,050+", counted only so far past the page
  const pages = Math.max(1, Math.ceil(total / filters.size));

  // Past the last page (e.g. studies deleted, filters narrowed): go to the last one.
  useEffect(() => {
    if (data && filters.page > pages) writeFilters({ ...filters, page: pages });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [data, pages]);

  const filtered = !!(filters.q || filters.patient || filters.modality || filters.from || filters.to);
  const today = dateToDicom(new Date());
  const range =
    filters.from === today && filters.to === today
      ? 'today'
      : filters.from === daysAgo(6) && !filters.to
        ? '7d'
        : filters.from === daysAgo(29) && !filters.to
          ? '30d'
          : !filters.from && !filters.to
            ? 'all'
            : 'custom';

  const sortBy = (k: SortKey) => {
    const cur = filters.sort.replace(/^-/, '');
    const desc = filters.sort.startsWith('-');
    let next: string;
    if (cur === k) next = desc ? k : `-${k}`;
    else next = k === 'study_date' ? '-study_date' : k;
    update({ sort: next });
  };

  const sharing = canShare(user?.role);
  const admin = isAdmin(user?.role);

  return (
    <div className="page page-wide">
      <div className="page-header">
        <div>
          <h1>Worklist</h1>
          <p className="page-subtitle" data-testid="worklist-total" aria-live="polite">
            {loading && !data
              ? 'Loading studies…'
              : `${formatCount(total)}${exact ? '' : '+'} ${total === 1 && exact ? 'study' : 'studies'}${filtered ? ' match the filters' : ''}`}
          </p>
        </div>
        <div className="page-actions">
          <span className="muted small" title="The list refreshes every 15 seconds">
            {updatedAt ? `Updated ${formatDateTime(updatedAt, true).slice(11)}` : ''}
          </span>
          <button type="button" className="btn btn-sm" onClick={reload} disabled={busy} data-testid="worklist-refresh">
            {busy ? <Spinner /> : null} Refresh
          </button>
        </div>
      </div>

      <div className="toolbar" role="search">
        <div className="search-box">
          <svg viewBox="0 0 20 20" aria-hidden="true" className="search-icon">
            <path d="M8.5 3a5.5 5.5 0 0 1 4.38 8.83l3.9 3.9-1.06 1.06-3.9-3.9A5.5 5.5 0 1 1 8.5 3Zm0 1.5a4 4 0 1 0 0 8 4 4 0 0 0 0-8Z" fill="currentColor" />
          </svg>
          <input
            className="input"
            type="search"
            placeholder="Search patient name, ID, description"
            value={search}
            onChange={(e) => setSearch(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === 'Enter') update({ q: search });
            }}
            aria-label="Search studies"
            data-testid="worklist-search"
          />
        </div>
        {filters.patient && (
          <span className="filter-chip" data-testid="worklist-patient">
            Patient ID {filters.patient}
            <button
              type="button"
              className="filter-chip-remove"
              aria-label="Show every patient"
              onClick={() => update({ patient: '' })}
            >
              ×
            </button>
          </span>
        )}
        <FilterSelect
          label="Modality"
          value={filters.modality}
          choices={MODALITIES}
          all="All modalities"
          onChange={(modality) => update({ modality })}
          testId="worklist-modality"
        />
        <div className="segmented" role="group" aria-label="Study date range">
          {(
            [
              ['today', 'Today', today, today],
              ['7d', '7 days', daysAgo(6), ''],
              ['30d', '30 days', daysAgo(29), ''],
              ['all', 'Any date', '', ''],
            ] as const
          ).map(([id, label, from, to]) => (
            <button
              key={id}
              type="button"
              className={range === id ? 'active' : ''}
              aria-pressed={range === id}
              onClick={() => update({ from, to })}
            >
              {label}
            </button>
          ))}
        </div>
        <div className="date-range">
          {(['from', 'to'] as const).map((end) => (
            <Fragment key={end}>
              {end === 'to' && <span className="muted">–</span>}
              <input
                className="input"
                type="date"
                value={dicomDateToIso(filters[end])}
                // Each end is bounded by the other.
                min={end === 'to' ? dicomDateToIso(filters.from) || undefined : undefined}
                max={end === 'from' ? dicomDateToIso(filters.to) || undefined : undefined}
                onChange={(e) => update({ [end]: isoDateToDicom(e.target.value) })}
                aria-label={`Study date ${end}`}
                data-testid={`worklist-date-${end}`}
              />
            </Fragment>
          ))}
        </div>
        {filtered && (
          <button
            type="button"
            className="btn btn-sm btn-link"
            onClick={() => {
              setSearch('');
              update({ q: '', patient: '', modality: '', from: '', to: '' });
            }}
          >
            Clear filters
          </button>
        )}
      </div>

      <DataTable
        columns={studyColumns({
          sort: filters.sort,
          onSort: sortBy,
          onShare: sharing ? setShareStudy : undefined,
          onDelete: admin ? setDeleting : undefined,
        })}
        rows={data?.items}
        rowKey={(s) => s.study_uid}
        rowProps={studyRowProps}
        loading={loading}
        loadingText="Loading studies…"
        empty={filtered ? 'No studies match these filters.' : 'No studies yet. Studies appear here as modalities send them.'}
        error={error}
        onRetry={reload}
        busy={busy}
        className="worklist"
        testId="worklist"
        pagination={
          data && total > 0
            ? {
                page: Math.min(filters.page, pages),
                pages,
                total,
                exact,
                size: filters.size,
                sizes: PAGE_SIZES,
                onPage: (page) => writeFilters({ ...filters, page }),
                onSize: (size) => writeFilters({ ...filters, size, page: 1 }),
                noun: 'studies',
              }
            : undefined
        }
      />

      {shareStudy && <ShareDialog study={shareStudy} onClose={() => setShareStudy(null)} />}
      <ConfirmAction
        target={deleting}
        title="Delete study"
        message={(s) => (
          <>
            Delete the {s.study_date ? `${formatDicomDate(s.study_date)} ` : ''}study of{' '}
            <strong>{formatPersonName(s.patient_name ?? '') || 'an unnamed patient'}</strong>
            {s.patient_id ? ` (ID ${s.patient_id})` : ''}: its images, previews and worklist entry are removed from the
            archive and the disk.
          </>
        )}
        irreversible
        confirmLabel="Delete study"
        onConfirm={(s) => endpoints.deleteStudy(s.study_uid)}
        onDone={reload}
        onClose={() => setDeleting(null)}
        testId="delete-study-message"
      />
    </div>
  );
}

/** A sortable column's header: a button that sorts by it (again: the other way). */
function sortable(k: SortKey, label: string, sort: string, onSort: (k: SortKey) => void): Pick<Column<Study>, 'header' | 'sort'> {
  const active = sort.replace(/^-/, '') === k;
  const desc = sort.startsWith('-');
  return {
    sort: active ? (desc ? 'descending' : 'ascending') : 'none',
    header: (
      <button type="button" className={`sort-btn${active ? ' active' : ''}`} onClick={() => onSort(k)} data-testid={`sort-${k}`}>
        {label}
        <span className="sort-ind" aria-hidden="true">
          {active ? (desc ? '▼' : '▲') : '↕'}
        </span>
      </button>
    ),
  };
}

/** A study's row opens the viewer on a double click outside its links and buttons. */
function studyRowProps(study: Study) {
  return {
    'data-testid': 'study-row',
    'data-study-uid': study.study_uid,
    onDoubleClick: (e: MouseEvent<HTMLTableRowElement>) => {
      if ((e.target as HTMLElement).closest('a,button')) return;
      window.location.assign(viewerUrl(study.study_uid));
    },
  };
}

function patientCell(study: Study) {
  const name = formatPersonName(study.patient_name);
  return (
    <>
      <span className={name ? 'strong' : 'muted'}>{name || 'Unnamed patient'}</span>
      {study.patient_id && <span className="sub-id mono">{study.patient_id}</span>}
    </>
  );
}

/** The worklist's columns; Share and Delete only for the roles given their handler. */
function studyColumns({
  sort,
  onSort,
  onShare,
  onDelete,
}: {
  sort: string;
  onSort: (k: SortKey) => void;
  onShare?: (s: Study) => void;
  onDelete?: (s: Study) => void;
}): Column<Study>[] {
  return [
    { ...sortable('patient_name', 'Patient', sort, onSort), cell: patientCell, className: 'col-patient_name' },
    { ...sortable('patient_id', 'Patient ID', sort, onSort), cell: (s) => s.patient_id || none, className: 'mono col-patient_id' },
    {
      ...sortable('study_date', 'Study date', sort, onSort),
      cell: (s) => formatDicomDate(s.study_date) || none,
      className: 'nowrap col-study_date',
    },
    {
      ...sortable('modalities', 'Modality', sort, onSort),
      cell: (s) =>
        (s.modalities ?? []).map((m) => (
          <span key={m} className="chip">
            {m}
          </span>
        )),
      className: 'col-modalities',
    },
    {
      ...sortable('description', 'Description', sort, onSort),
      cell: (s) => (
        <span className="truncate" title={s.description}>
          {s.description || none}
        </span>
      ),
      className: 'col-description',
    },
    {
      header: 'Series / images',
      cell: (s) => `${formatCount(s.series_count)} / ${formatCount(s.instance_count)}`,
      className: 'num col-counts',
    },
    { header: 'Ingest', cell: (s) => <IngestProgress study={s} />, className: 'col-progress' },
    actionsColumn((s: Study) => (
      <div className="row-actions">
        <a className="btn btn-sm btn-primary" href={viewerUrl(s.study_uid)} data-testid="open-viewer">
          Open
        </a>
        {onShare && (
          <button type="button" className="btn btn-sm" onClick={() => onShare(s)} data-testid="share-study">
            Share
          </button>
        )}
        {onDelete && (
          <button type="button" className="btn btn-sm btn-danger-outline" onClick={() => onDelete(s)} data-testid="delete-study">
            Delete
          </button>
        )}
      </div>
    )),
  ];
}

export function IngestProgress({ study }: { study: Study }) {
  const p = study.progress ?? { received: 0, transcoded: 0, stored: 0, failed: 0 };
  const total = Math.max(p.received || 0, (p.stored || 0) + (p.failed || 0), 0) || study.instance_count || 0;
  const stored = p.stored || 0;
  const failed = p.failed || 0;
  const done = total > 0 && stored >= total && failed === 0;
  const pct = (n: number) => (total > 0 ? Math.min(100, (n / total) * 100) : 0);
  const title =
    `Received ${formatCount(p.received)} · transcoded ${formatCount(p.transcoded)} · ` +
    `stored ${formatCount(stored)} · failed ${formatCount(failed)} · ` +
    `${formatCount(study.series_count)} series` +
    (study.updated_at ? ` · updated ${formatDateTime(study.updated_at)}` : '');
  return (
    <div className={`progress${done ? ' is-done' : ''}${failed ? ' has-failed' : ''}`} title={title} data-testid="study-progress">
      <div className="progress-bar" aria-hidden="true">
        <span className="progress-stored" style={{ width: `${pct(stored)}%` }} />
        <span className="progress-failed" style={{ width: `${pct(failed)}%` }} />
      </div>
      <div className="progress-text">
        <span>
          stored {formatCount(stored)}/{formatCount(total)}
        </span>
        {failed > 0 && (
          <span className="text-bad progress-fail">
            <span className="sep"> · </span>
            {formatCount(failed)} failed
          </span>
        )}
      </div>
    </div>
  );
}
