import type { ReactNode } from 'react';
import { ROLE_LABEL, canShare, isAdmin, useAuth } from '../lib/auth';
import { Link, useLocation } from '../lib/router';

interface NavItem {
  to: string;
  label: string;
  show: boolean;
}

export function Logo() {
  return (
    <svg className="logo" viewBox="0 0 32 32" aria-hidden="true">
      <rect width="32" height="32" rx="7" fill="currentColor" />
      <path d="M9 23V9h2.6l7.8 9.6V9H22v14h-2.6L11.6 13.4V23z" fill="#fff" />
    </svg>
  );
}

export function Layout({ children }: { children: ReactNode }) {
  const { user, logout } = useAuth();
  const { pathname } = useLocation();
  const role = user?.role;
  const items: NavItem[] = [
    { to: '/', label: 'Worklist', show: true },
    { to: '/shares', label: 'Shares', show: canShare(role) },
    { to: '/admin/users', label: 'Users', show: isAdmin(role) },
    { to: '/admin/modalities', label: 'Modalities', show: isAdmin(role) },
    { to: '/admin/system', label: 'System', show: isAdmin(role) },
    { to: '/admin/audit', label: 'Audit', show: isAdmin(role) },
  ];
  return (
    <div className="app">
      <header className="topbar">
        <Link to="/" className="brand" aria-label="NeuroNova worklist">
          <Logo />
          <span>NeuroNova</span>
        </Link>
        <nav className="nav" aria-label="Main">
          {items
            .filter((i) => i.show)
            .map((i) => (
              <Link
                key={i.to}
                to={i.to}
                className={`nav-link${pathname === i.to ? ' active' : ''}`}
                aria-current={pathname === i.to ? 'page' : undefined}
                data-testid={`nav-${i.label.toLowerCase()}`}
              >
                {i.label}
              </Link>
            ))}
        </nav>
        {user && (
          <div className="userbox">
            <div className="user-meta">
              <span className="user-name" data-testid="current-user">
                {user.username}
              </span>
              <span className="user-role" data-testid="current-role">
                {ROLE_LABEL[user.role] ?? user.role}
              </span>
            </div>
            <button type="button" className="btn btn-sm btn-ghost-light" onClick={() => void logout()} data-testid="logout">
              Sign out
            </button>
          </div>
        )}
      </header>
      <main className="content">{children}</main>
    </div>
  );
}
