// ConfirmAction rendered into happy-dom: what it says, focus, Escape, busy and failure.
import { act, useState } from 'react';
import { createRoot, type Root } from 'react-dom/client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ConfirmAction } from './ConfirmAction';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

interface Device {
  ae: string;
}

let root: Root | null = null;
let container: HTMLElement;

/** A page with one Remove button that opens the confirmation for device CT_1. */
function Page({ onConfirm, onDone }: { onConfirm: (d: Device) => Promise<unknown>; onDone: () => void }) {
  const [removing, setRemoving] = useState<Device | null>(null);
  return (
    <>
      <button type="button" data-testid="remove" onClick={() => setRemoving({ ae: 'CT_1' })}>
        Remove
      </button>
      <ConfirmAction
        target={removing}
        title="Remove modality"
        message={(d) => (
          <>
            <strong>{d.ae}</strong> will no longer be able to send studies.
          </>
        )}
        irreversible
        confirmLabel="Remove"
        onConfirm={onConfirm}
        onDone={onDone}
        onClose={() => setRemoving(null)}
        testId="confirm-text"
      />
    </>
  );
}

async function open(onConfirm: (d: Device) => Promise<unknown>, onDone = vi.fn()) {
  container = document.createElement('div');
  document.body.appendChild(container);
  await act(async () => {
    root = createRoot(container);
    root.render(<Page onConfirm={onConfirm} onDone={onDone} />);
  });
  await act(async () => byTestId('remove')!.click());
  return onDone;
}

const byTestId = (id: string) => container.querySelector<HTMLElement>(`[data-testid="${id}"]`);
const dialog = () => byTestId('confirm-dialog') as HTMLDialogElement;
const isOpen = () => !!byTestId('confirm-ok');

afterEach(async () => {
  await act(async () => root?.unmount());
  root = null;
  document.body.innerHTML = '';
});

describe('ConfirmAction', () => {
  it('says what will happen to the named thing, labelled by its title, with Cancel focused', async () => {
    await open(vi.fn());
    expect(dialog().open).toBe(true);
    const title = document.getElementById(dialog().getAttribute('aria-labelledby')!)!;
    expect(title.textContent).toBe('Remove modality');
    expect(byTestId('confirm-text')!.textContent).toBe('CT_1 will no longer be able to send studies. This cannot be undone.');
    expect(byTestId('confirm-text')!.querySelector('strong')!.textContent).toBe('CT_1');
    expect(byTestId('confirm-ok')!.textContent).toBe('Remove');
    expect(byTestId('confirm-ok')!.className).toContain('btn-danger');
    expect(document.activeElement).toBe(byTestId('confirm-cancel'));
    expect(byTestId('confirm-cancel')!.textContent).toBe('Cancel');
  });

  it('does nothing on Cancel or Escape', async () => {
    const confirm = vi.fn();
    await open(confirm);
    await act(async () => byTestId('confirm-cancel')!.click());
    expect(isOpen()).toBe(false);
    await act(async () => byTestId('remove')!.click());
    expect(isOpen()).toBe(true);
    await act(async () => {
      byTestId('confirm-cancel')!.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }));
    });
    expect(isOpen()).toBe(false);
    expect(confirm).not.toHaveBeenCalled();
  });

  it('is busy while the action runs, then closes and tells the page', async () => {
    let finish!: () => void;
    const confirm = vi.fn(() => new Promise<void>((resolve) => (finish = resolve)));
    const done = await open(confirm);
    await act(async () => byTestId('confirm-ok')!.click());
    expect(confirm).toHaveBeenCalledWith({ ae: 'CT_1' });
    expect(byTestId('confirm-ok')!.textContent).toBe('Working…');
    expect((byTestId('confirm-ok') as HTMLButtonElement).disabled).toBe(true);
    expect((byTestId('confirm-cancel') as HTMLButtonElement).disabled).toBe(true);
    expect(done).not.toHaveBeenCalled();
    await act(async () => finish());
    expect(done).toHaveBeenCalledOnce();
    expect(isOpen()).toBe(false);
  });

  it('shows a failure in the dialog and stays open to try again', async () => {
    const confirm = vi.fn().mockRejectedValueOnce(new Error('CT_1 is still sending.')).mockResolvedValueOnce(undefined);
    const done = await open(confirm);
    await act(async () => byTestId('confirm-ok')!.click());
    expect(dialog().querySelector('[role="alert"]')!.textContent).toContain('CT_1 is still sending.');
    expect(isOpen()).toBe(true);
    expect(byTestId('confirm-ok')!.textContent).toBe('Remove');
    expect(done).not.toHaveBeenCalled();
    await act(async () => byTestId('confirm-ok')!.click());
    expect(done).toHaveBeenCalledOnce();
    expect(isOpen()).toBe(false);
  });

  it('forgets an old failure when opened again', async () => {
    await open(vi.fn().mockRejectedValue(new Error('refused')));
    await act(async () => byTestId('confirm-ok')!.click());
    expect(dialog().querySelector('[role="alert"]')).not.toBeNull();
    await act(async () => byTestId('confirm-cancel')!.click());
    await act(async () => byTestId('remove')!.click());
    expect(dialog().querySelector('[role="alert"]')).toBeNull();
  });
});
