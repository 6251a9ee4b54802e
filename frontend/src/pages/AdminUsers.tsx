import { useState, type FormEvent } from 'react';
import { endpoints, type AdminUser, type Role } from '../lib/api';
import { ROLE_LABEL, useAuth } from '../lib/auth';
import { formatDateTime } from '../lib/format';
import { useFetch } from '../lib/useFetch';
import { ConfirmAction } from '../components/ConfirmAction';
import { actionsColumn, DataTable, type Column } from '../components/DataTable';
import { Badge, DialogButtons, ErrorBanner, Modal, PageHeader } from '../components/ui';
import { useAction } from '../lib/useAction';

const ROLES: Role[] = ['radiologist', 'technologist', 'admin'];
const MIN_PASSWORD = 10; // the server refuses shorter ones (appliance/users.py)

/** What the Approve/Enable/Disable button does to an account, in its words. */
function accessChange(u: AdminUser): { verb: string; outcome: string } {
  if (u.pending) return { verb: 'Approve', outcome: 'will be able to sign in.' };
  if (u.disabled) return { verb: 'Enable', outcome: 'will be able to sign in again.' };
  return { verb: 'Disable', outcome: 'will no longer be able to sign in.' };
}

function statusBadge(u: AdminUser) {
  if (u.pending) return <Badge tone="warn">Awaiting approval</Badge>;
  if (u.disabled) return <Badge tone="bad">Disabled</Badge>;
  return <Badge tone="ok">Active</Badge>;
}

/** The accounts' columns: the role is changed in place, the buttons open a dialog. */
function userColumns({
  me,
  savingRole,
  onRole,
  onPassword,
  onToggle,
}: {
  me: string | undefined;
  savingRole: string | null;
  onRole: (u: AdminUser, role: Role) => void;
  onPassword: (u: AdminUser) => void;
  onToggle: (u: AdminUser) => void;
}): Column<AdminUser>[] {
  return [
    {
      header: 'User name',
      cell: (u) => (
        <>
          <span className="strong">{u.username}</span>
          {u.username === me && <span className="muted small"> (you)</span>}
        </>
      ),
      className: 'nowrap-strict',
    },
    {
      header: 'Role',
      cell: (u) => (
        <select
          className="input select input-sm"
          value={u.role}
          disabled={u.username === me || savingRole === u.username}
          title={u.username === me ? 'You cannot change your own role' : undefined}
          onChange={(e) => onRole(u, e.target.value as Role)}
          aria-label={`Role of ${u.username}`}
          data-testid="user-role"
        >
          {ROLES.map((r) => (
            <option key={r} value={r}>
              {ROLE_LABEL[r]}
            </option>
          ))}
        </select>
      ),
    },
    { header: 'Status', cell: statusBadge },
    { header: 'Created', cell: (u) => formatDateTime(u.created_at), className: 'nowrap' },
    {
      header: 'Last sign-in',
      cell: (u) => (u.last_login ? formatDateTime(u.last_login) : <span className="muted">Never</span>),
      className: 'nowrap',
    },
    actionsColumn((u) => (
      <div className="row-actions">
        <button type="button" className="btn btn-sm" onClick={() => onPassword(u)} data-testid="user-password">
          Set password
        </button>
        <button
          type="button"
          className={`btn btn-sm ${u.disabled ? '' : 'btn-danger-outline'}`}
          disabled={u.username === me}
          title={u.username === me ? 'You cannot disable your own account' : undefined}
          onClick={() => onToggle(u)}
          data-testid="user-toggle"
        >
          {accessChange(u).verb}
        </button>
      </div>
    )),
  ];
}

export function AdminUsersPage() {
  const { user: me } = useAuth();
  const { data, error, loading, reload } = useFetch((signal) => endpoints.users(signal), 'users');
  const [creating, setCreating] = useState(false);
  const [pwFor, setPwFor] = useState<AdminUser | null>(null);
  const [toggling, setToggling] = useState<AdminUser | null>(null);
  const roleChange = useAction();
  const [savingRole, setSavingRole] = useState<string | null>(null);

  const users = [...(data?.items ?? [])].sort((a, b) => a.username.localeCompare(b.username));

  async function changeRole(u: AdminUser, role: Role) {
    setSavingRole(u.username);
    if (await roleChange.run(() => endpoints.updateUser(u.username, { role }))) reload();
    setSavingRole(null);
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
      <ErrorBanner error={roleChange.error} />
      <DataTable
        columns={userColumns({ me: me?.username, savingRole, onRole: changeRole, onPassword: setPwFor, onToggle: setToggling })}
        rows={data ? users : undefined}
        rowKey={(u) => u.username}
        rowProps={(u) => ({ 'data-testid': 'user-row', 'data-username': u.username, className: u.disabled ? 'row-dim' : '' })}
        loading={loading}
        empty="No users."
        error={error}
        onRetry={reload}
        testId="users-table"
      />

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
      <ConfirmAction
        target={toggling}
        title={toggling ? `${accessChange(toggling).verb} user` : ''}
        message={(u) => (
          <>
            <strong>{u.username}</strong> {accessChange(u).outcome}
          </>
        )}
        confirmLabel={toggling ? accessChange(toggling).verb : ''}
        danger={!toggling?.disabled}
        onConfirm={(u) => endpoints.updateUser(u.username, { disabled: !u.disabled })}
        onDone={reload}
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
  const { busy, error, setError, run } = useAction();

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
    if (await run(() => endpoints.createUser(name, role, password))) onCreated();
  }

  return (
    <Modal
      title="Add user"
      open
      onClose={onClose}
      testId="create-user-dialog"
      footer={
        <DialogButtons form="create-user-form" label="Add user" busyLabel="Adding…" busy={busy} onCancel={onClose} testId="create-user-submit" />
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
  const { busy, error, setError, run } = useAction();
  const [done, setDone] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    const p = passwordProblem(password, confirm);
    if (p) {
      setError(p);
      return;
    }
    if (await run(() => endpoints.updateUser(user.username, { password }))) setDone(true);
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
          <DialogButtons form="password-form" label="Set password" busyLabel="Saving…" busy={busy} onCancel={onClose} />
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
