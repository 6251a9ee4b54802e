import { useState, type FormEvent } from 'react';
import { endpoints, type AdminUser, type Role } from '../lib/api';
import { ROLE_LABEL, useAuth } from '../lib/auth';
import { formatDateTime } from '../lib/format';
import { useFetch } from '../lib/useFetch';
import { Badge, ConfirmDialog, EmptyRow, ErrorBanner, Modal, PageHeader, Spinner } from '../components/ui';

const ROLES: Role[] = ['radiologist', 'technologist', 'admin'];
const MIN_PASSWORD = 10; // the server refuses shorter ones (appliance/users.py)

export function AdminUsersPage() {
  const { user: me } = useAuth();
  const { data, error, loading, reload } = useFetch((signal) => endpoints.users(signal), 'users');
  const [creating, setCreating] = useState(false);
  const [pwFor, setPwFor] = useState<AdminUser | null>(null);
  const [toggling, setToggling] = useState<AdminUser | null>(null);
  const [rowError, setRowError] = useState<unknown>(null);
  const [savingRole, setSavingRole] = useState<string | null>(null);

  const users = [...(data?.items ?? [])].sort((a, b) => a.username.localeCompare(b.username));

  async function changeRole(u: AdminUser, role: Role) {
    setRowError(null);
    setSavingRole(u.username);
    try {
      await endpoints.updateUser(u.username, { role });
      reload();
    } catch (e) {
      setRowError(e);
    } finally {
      setSavingRole(null);
    }
  }

  return (
    <div className="page">
      <PageHeader
        title="Users"
        subtitle="Accounts that can sign in to NeuroNova"
        actions={
          <button type="button" className="btn btn-primary" onClick={() => setCreating(true)} data-testid="add-user">
            Add user
          </button>
        }
      />
      <ErrorBanner error={error} onRetry={reload} />
      <ErrorBanner error={rowError} />
      <div className="table-wrap">
        <table className="table" data-testid="users-table">
          <thead>
            <tr>
              <th scope="col">User name</th>
              <th scope="col">Role</th>
              <th scope="col">Status</th>
              <th scope="col">Created</th>
              <th scope="col">Last sign-in</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {loading && !data && (
              <EmptyRow colSpan={6}>
                <Spinner /> Loading…
              </EmptyRow>
            )}
            {data && users.length === 0 && <EmptyRow colSpan={6}>No users.</EmptyRow>}
            {users.map((u) => {
              const self = u.username === me?.username;
              return (
                <tr key={u.username} data-testid="user-row" data-username={u.username} className={u.disabled ? 'row-dim' : ''}>
                  <td className="nowrap-strict">
                    <span className="strong">{u.username}</span>
                    {self && <span className="muted small"> (you)</span>}
                  </td>
                  <td>
                    <select
                      className="input select input-sm"
                      value={u.role}
                      disabled={self || savingRole === u.username}
                      title={self ? 'You cannot change your own role' : undefined}
                      onChange={(e) => void changeRole(u, e.target.value as Role)}
                      aria-label={`Role of ${u.username}`}
                      data-testid="user-role"
                    >
                      {ROLES.map((r) => (
                        <option key={r} value={r}>
                          {ROLE_LABEL[r]}
                        </option>
                      ))}
                    </select>
                  </td>
                  <td>
                    {u.pending ? (
                      <Badge tone="warn">Awaiting approval</Badge>
                    ) : u.disabled ? (
                      <Badge tone="bad">Disabled</Badge>
                    ) : (
                      <Badge tone="ok">Active</Badge>
                    )}
                  </td>
                  <td className="nowrap">{formatDateTime(u.created_at)}</td>
                  <td className="nowrap">{u.last_login ? formatDateTime(u.last_login) : <span className="muted">Never</span>}</td>
                  <td className="col-actions">
                    <div className="row-actions">
                      <button type="button" className="btn btn-sm" onClick={() => setPwFor(u)} data-testid="user-password">
                        Set password
                      </button>
                      <button
                        type="button"
                        className={`btn btn-sm ${u.disabled ? '' : 'btn-danger-outline'}`}
                        disabled={self}
                        title={self ? 'You cannot disable your own account' : undefined}
                        onClick={() => setToggling(u)}
                        data-testid="user-toggle"
                      >
                        {u.pending ? 'Approve' : u.disabled ? 'Enable' : 'Disable'}
                      </button>
                    </div>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>

      {creating && (
        <CreateUserDialog
          onClose={() => setCreating(false)}
          onCreated={() => {
            setCreating(false);
            reload();
          }}
        />
      )}
      {pwFor && <PasswordDialog user={pwFor} onClose={() => setPwFor(null)} />}
      <ConfirmDialog
        open={!!toggling}
        title={toggling?.disabled ? 'Enable user' : 'Disable user'}
        message={
          toggling?.disabled ? (
            <p>
              <strong>{toggling?.username}</strong> will be able to sign in again.
            </p>
          ) : (
            <p>
              <strong>{toggling?.username}</strong> will no longer be able to sign in.
            </p>
          )
        }
        confirmLabel={toggling?.disabled ? 'Enable' : 'Disable'}
        danger={!toggling?.disabled}
        onConfirm={async () => {
          if (toggling) await endpoints.updateUser(toggling.username, { disabled: !toggling.disabled });
          reload();
        }}
        onClose={() => setToggling(null)}
      />
    </div>
  );
}

function passwordProblem(pw: string, confirm: string): string | null {
  if (pw.length < MIN_PASSWORD) return `Use at least ${MIN_PASSWORD} characters.`;
  if (pw !== confirm) return 'The passwords do not match.';
  return null;
}

function CreateUserDialog({ onClose, onCreated }: { onClose: () => void; onCreated: () => void }) {
  const [username, setUsername] = useState('');
  const [role, setRole] = useState<Role>('radiologist');
  const [password, setPassword] = useState('');
  const [confirm, setConfirm] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    const name = username.trim();
    if (!/^[A-Za-z0-9._@-]{1,64}$/.test(name)) {
      setError('User names use letters, digits and . _ @ - (up to 64 characters).');
      return;
    }
    const p = passwordProblem(password, confirm);
    if (p) {
      setError(p);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await endpoints.createUser(name, role, password);
      onCreated();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <Modal
      title="Add user"
      open
      onClose={onClose}
      testId="create-user-dialog"
      footer={
        <>
          <button type="button" className="btn" onClick={onClose} disabled={busy}>
            Cancel
          </button>
          <button type="submit" form="create-user-form" className="btn btn-primary" disabled={busy} data-testid="create-user-submit">
            {busy ? 'Adding…' : 'Add user'}
          </button>
        </>
      }
    >
      <form id="create-user-form" onSubmit={submit} autoComplete="off">
        <label className="field">
          <span className="field-label">User name</span>
          <input className="input" value={username} onChange={(e) => setUsername(e.target.value)} autoFocus autoComplete="off" autoCapitalize="none" spellCheck={false} data-testid="new-username" />
        </label>
        <label className="field">
          <span className="field-label">Role</span>
          <select className="input select" value={role} onChange={(e) => setRole(e.target.value as Role)} data-testid="new-role">
            {ROLES.map((r) => (
              <option key={r} value={r}>
                {ROLE_LABEL[r]}
              </option>
            ))}
          </select>
        </label>
        <div className="field-row">
          <label className="field">
            <span className="field-label">Password</span>
            <input className="input" type="password" autoComplete="new-password" value={password} onChange={(e) => setPassword(e.target.value)} data-testid="new-password" />
          </label>
          <label className="field">
            <span className="field-label">Repeat password</span>
            <input className="input" type="password" autoComplete="new-password" value={confirm} onChange={(e) => setConfirm(e.target.value)} data-testid="new-password-confirm" />
          </label>
        </div>
        <ErrorBanner error={error} />
      </form>
    </Modal>
  );
}

function PasswordDialog({ user, onClose }: { user: AdminUser; onClose: () => void }) {
  const [password, setPassword] = useState('');
  const [confirm, setConfirm] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    const p = passwordProblem(password, confirm);
    if (p) {
      setError(p);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await endpoints.updateUser(user.username, { password });
      setDone(true);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <Modal
      title={`Set password for ${user.username}`}
      open
      onClose={onClose}
      footer={
        done ? (
          <button type="button" className="btn btn-primary" onClick={onClose}>
            Done
          </button>
        ) : (
          <>
            <button type="button" className="btn" onClick={onClose} disabled={busy}>
              Cancel
            </button>
            <button type="submit" form="password-form" className="btn btn-primary" disabled={busy}>
              {busy ? 'Saving…' : 'Set password'}
            </button>
          </>
        )
      }
    >
      {done ? (
        <div className="alert alert-ok">The password was changed.</div>
      ) : (
        <form id="password-form" onSubmit={submit} autoComplete="off">
          <label className="field">
            <span className="field-label">New password</span>
            <input className="input" type="password" autoComplete="new-password" autoFocus value={password} onChange={(e) => setPassword(e.target.value)} />
          </label>
          <label className="field">
            <span className="field-label">Repeat password</span>
            <input className="input" type="password" autoComplete="new-password" value={confirm} onChange={(e) => setConfirm(e.target.value)} />
          </label>
          <ErrorBanner error={error} />
        </form>
      )}
    </Modal>
  );
}
