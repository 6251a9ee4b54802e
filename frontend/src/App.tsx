import { useEffect, type ReactNode } from 'react';
import { Layout } from './components/Layout';
import { Spinner } from './components/ui';
import { AuthProvider, canShare, isAdmin, useAuth } from './lib/auth';
import { Link, loginUrlForCurrentPage, navigate, useLocation } from './lib/router';
import { AdminAuditPage } from './pages/AdminAudit';
import { AdminModalitiesPage } from './pages/AdminModalities';
import { AdminSystemPage } from './pages/AdminSystem';
import { AdminUsersPage } from './pages/AdminUsers';
import { LoginPage } from './pages/Login';
import { SharesPage } from './pages/Shares';
import { WorklistPage } from './pages/Worklist';
import type { Role } from './lib/api';

interface RouteDef {
  title: string;
  allowed: (role: Role) => boolean;
  render: () => ReactNode;
}

const ROUTES: Record<string, RouteDef> = {
  '/': { title: 'Worklist', allowed: () => true, render: () => <WorklistPage /> },
  '/shares': { title: 'Shared links', allowed: canShare, render: () => <SharesPage /> },
  '/admin/users': { title: 'Users', allowed: isAdmin, render: () => <AdminUsersPage /> },
  '/admin/modalities': { title: 'Modalities', allowed: isAdmin, render: () => <AdminModalitiesPage /> },
  '/admin/system': { title: 'System', allowed: isAdmin, render: () => <AdminSystemPage /> },
  '/admin/audit': { title: 'Audit trail', allowed: isAdmin, render: () => <AdminAuditPage /> },
};

function Router() {
  const { state } = useAuth();
  const { pathname } = useLocation();
  const path = pathname.length > 1 ? pathname.replace(/\/+$/, '') : pathname;
  const route = ROUTES[path];

  useEffect(() => {
    document.title = path === '/login' ? 'Sign in · NeuroNova' : `${route?.title ?? 'Not found'} · NeuroNova`;
  }, [path, route]);

  // Signed out on a protected page: to the login page, remembering where we were.
  useEffect(() => {
    if (state.status === 'anonymous' && path !== '/login') {
      navigate(loginUrlForCurrentPage(), { replace: true });
    }
  }, [state.status, path]);

  if (path === '/login') return <LoginPage />;
  if (state.status !== 'authenticated') {
    return (
      <div className="boot">
        <Spinner /> <span className="muted">Loading NeuroNova…</span>
      </div>
    );
  }
  if (!route) {
    return (
      <Layout>
        <Message title="Page not found" text="There is no page at this address." />
      </Layout>
    );
  }
  if (!route.allowed(state.user.role)) {
    return (
      <Layout>
        <Message title="Not available" text="Your role does not give access to this page." />
      </Layout>
    );
  }
  return <Layout>{route.render()}</Layout>;
}

function Message({ title, text }: { title: string; text: string }) {
  return (
    <div className="page">
      <div className="card center message" data-testid="page-message">
        <h1>{title}</h1>
        <p className="muted">{text}</p>
        <Link to="/" className="btn btn-primary">
          Go to the worklist
        </Link>
      </div>
    </div>
  );
}

export function App() {
  return (
    <AuthProvider>
      <Router />
    </AuthProvider>
  );
}
