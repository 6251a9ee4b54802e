// Display helpers for DICOM values and system figures. Pure functions, unit-tested.

/**
 * Format a DICOM Person Name (PN), e.g. "Doe^John^A^Dr^Jr" -> "Doe, Dr John A, Jr".
 *
 * A PN has up to three component groups separated by "=" (alphabetic, ideographic,
 * phonetic); the first non-empty one is shown. Within a group the components are
 * family^given^middle^prefix^suffix. Case is kept as received.
 */
export function formatPersonName(pn: string | null | undefined): string {
  if (!pn) return '';
  const group = pn
    .split('=')
    .map((g) => g.trim())
    .find((g) => g.replace(/\^/g, '').trim() !== '');
  if (!group) return '';
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = group
    .split('^')
    .map((c) => c.trim().replace(/\s+/g, ' '));
  const rest = [prefix, given, middle].filter(Boolean).join(' ');
  let out = family;
  if (rest) out = out ? `${out}, ${rest}` : rest;
  if (suffix) out = out ? `${out}, ${suffix}` : suffix;
  return out;
}

/** Format a DICOM DA value "YYYYMMDD" as ISO "YYYY-MM-DD"; anything else is returned as is. */
export function formatDicomDate(da: string | null | undefined): string {
  if (!da) return '';
  const s = da.trim();
  // Legacy ACR-NEMA form "YYYY.MM.DD" is still seen from old modalities.
  const m = /^(\d{4})\.?(\d{2})\.?(\d{2})$/.exec(s);
  if (!m) return s;
  const [, y, mo, d] = m;
  const month = Number(mo);
  const day = Number(d);
  if (month < 1 || month > 12 || day < 1 || day > 31) return s;
  return `${y}-${mo}-${d}`;
}

/** "2024-03-15" (from <input type="date">) -> "20240315"; "" stays "". */
export function isoDateToDicom(iso: string): string {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
  return m ? `${m[1]}${m[2]}${m[3]}` : '';
}

/** "20240315" -> "2024-03-15" for <input type="date">; invalid -> "". */
export function dicomDateToIso(da: string | null | undefined): string {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(da ?? '');
  return m ? `${m[1]}-${m[2]}-${m[3]}` : '';
}

/** A local Date as DICOM DA. */
export function dateToDicom(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}`;
}

/** Bytes in binary units: 1536 -> "1.5 KiB". */
export function formatBytes(n: number | null | undefined): string {
  if (n == null || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Math.max(0, n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const digits = i === 0 || v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${units[i]}`;
}

/** Seconds as a short duration: 42 -> "42 s", 125 -> "2 min 5 s", 7260 -> "2 h 1 min". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

/**
 * Parse a timestamp from the API: ISO 8601 string, or a number of seconds (or
 * milliseconds) since the epoch. Returns null when it cannot be read.
 */
export function parseTimestamp(ts: string | number | null | undefined): Date | null {
  if (ts == null || ts === '') return null;
  let d: Date;
  if (typeof ts === 'number' || /^\d+(\.\d+)?$/.test(ts)) {
    const n = Number(ts);
    d = new Date(n < 1e12 ? n * 1000 : n);
  } else {
    d = new Date(ts);
  }
  return Number.isNaN(d.getTime()) ? null : d;
}

/** Local "YYYY-MM-DD HH:MM" (or with seconds). */
export function formatDateTime(
  ts: string | number | null | undefined,
  withSeconds = false,
): string {
  const d = parseTimestamp(ts);
  if (!d) return ts == null || ts === '' ? '—' : String(ts);
  const p = (n: number) => String(n).padStart(2, '0');
  const date = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  const time = `${p(d.getHours())}:${p(d.getMinutes())}${withSeconds ? `:${p(d.getSeconds())}` : ''}`;
  return `${date} ${time}`;
}

/** "in 3 h", "5 min ago", relative to now. */
export function formatRelative(
  ts: string | number | null | undefined,
  now: number = Date.now(),
): string {
  const d = parseTimestamp(ts);
  if (!d) return '';
  const diff = (d.getTime() - now) / 1000;
  const text = formatDuration(Math.abs(diff)).replace(/ \d+ s$/, '');
  return diff >= 0 ? `in ${text}` : `${text} ago`;
}

export function formatCount(n: number | null | undefined): string {
  return n == null || !Number.isFinite(n) ? '—' : n.toLocaleString('en-US');
}
