import { describe, expect, it } from 'vitest';
import {
  dicomDateToIso,
  formatBytes,
  formatDicomDate,
  formatDuration,
  formatPersonName,
  isoDateToDicom,
  parseTimestamp,
} from './format';
import { safeNextPath } from './router';

describe('formatPersonName', () => {
  it.each([
    ['Doe^John', 'Doe, John'],
    ['DOE^JOHN', 'DOE, JOHN'],
    ['Doe^John^Adam', 'Doe, John Adam'],
    ['Doe^John^^Dr^Jr', 'Doe, Dr John, Jr'],
    ['Doe', 'Doe'],
    ['Doe^^^', 'Doe'],
    ['^John', 'John'],
    ['Yamada^Tarou=山田^太郎=やまだ^たろう', 'Yamada, Tarou'],
    ['=山田^太郎', '山田, 太郎'],
    ['  Doe ^ John ', 'Doe, John'],
    ['', ''],
    ['^^^^', ''],
  ])('%j -> %j', (pn, expected) => {
    expect(formatPersonName(pn)).toBe(expected);
  });

  it('handles missing values', () => {
    expect(formatPersonName(null)).toBe('');
    expect(formatPersonName(undefined)).toBe('');
  });
});

describe('DICOM dates', () => {
  it.each([
    ['20240315', '2024-03-15'],
    ['2024.03.15', '2024-03-15'],
    [' 19991231 ', '1999-12-31'],
    ['20241301', '20241301'],
    ['2024', '2024'],
    ['', ''],
  ])('formatDicomDate(%j) = %j', (da, expected) => {
    expect(formatDicomDate(da)).toBe(expected);
  });

  it('converts between date inputs and DA', () => {
    expect(isoDateToDicom('2024-03-15')).toBe('20240315');
    expect(isoDateToDicom('')).toBe('');
    expect(dicomDateToIso('20240315')).toBe('2024-03-15');
    expect(dicomDateToIso('bad')).toBe('');
  });
});

describe('units', () => {
  it('formats bytes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(52 * 1024 ** 3)).toBe('52.0 GiB');
    expect(formatBytes(1.5 * 1024 ** 4)).toBe('1.50 TiB');
    expect(formatBytes(null)).toBe('—');
  });

  it('formats durations', () => {
    expect(formatDuration(4.2)).toBe('4 s');
    expect(formatDuration(125)).toBe('2 min 5 s');
    expect(formatDuration(3600)).toBe('1 h');
    expect(formatDuration(7260)).toBe('2 h 1 min');
    expect(formatDuration(3 * 86400)).toBe('3 d');
    expect(formatDuration(null)).toBe('—');
  });

  it('parses ISO and epoch timestamps', () => {
    expect(parseTimestamp('2024-03-15T10:00:00Z')?.toISOString()).toBe('2024-03-15T10:00:00.000Z');
    expect(parseTimestamp(1710496800)?.toISOString()).toBe('2024-03-15T10:00:00.000Z');
    expect(parseTimestamp(1710496800000)?.toISOString()).toBe('2024-03-15T10:00:00.000Z');
    expect(parseTimestamp('nonsense')).toBeNull();
  });
});

describe('safeNextPath', () => {
  it.each([
    ['/admin/users', '/admin/users'],
    ['/pacs-viewer/viewer?StudyInstanceUIDs=1.2.3', '/pacs-viewer/viewer?StudyInstanceUIDs=1.2.3'],
    ['//evil.example/x', '/'],
    ['/\\evil.example', '/'],
    ['https://evil.example/', '/'],
    ['javascript:alert(1)', '/'],
    ['', '/'],
    [null, '/'],
  ])('%j -> %j', (next, expected) => {
    expect(safeNextPath(next)).toBe(expected);
  });
});
