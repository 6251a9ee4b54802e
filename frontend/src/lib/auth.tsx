import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import { api, endpoints, type Role, type User } from './api';
import { loginUrlForCurrentPage, navigate } from './router';

type AuthState =
  | { status: 'loading'; user: null }
  | { status: 'anonymous'; user: null }
  | { status: 'authenticated'; user: User };

interface AuthContextValue {
  state: AuthState;
  user: User | null;
  signedIn: (user: User) => void;
  logout: () => Promise<void>;
}

const AuthContext = createContext<AuthContextValue | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [state, setState] = useState<AuthState>({ status: 'loading', user: null });

  useEffect(() => {
    // Any API call whose 401 survives a refresh lands here.
    api.setAuthFailureHandler(() => {
      setState({ status: 'anonymous', user: null });
      if (window.location.pathname !== '/login') {
        navigate(loginUrlForCurrentPage(), { replace: true });
      }
    });
    const ctl = new AbortController();
    endpoints
      .me(ctl.signal)
      .then((user) => setState({ status: 'authenticated', user }))
      .catch((e: unknown) => {
        if (ctl.signal.aborted) return;
        // 401 (after a refresh attempt) or server unreachable: show the login page.
        void e;
        setState({ status: 'anonymous', user: null });
      });
    return () => ctl.abort();
  }, []);

  const signedIn = useCallback((user: User) => setState({ status: 'authenticated', user }), []);

  const logout = useCallback(async () => {
    try {
      await endpoints.logout();
    } catch {
      // The session may already be gone; the cookies are cleared by the server when it can.
    }
    setState({ status: 'anonymous', user: null });
    navigate('/login', { replace: true });
  }, []);

  const value = useMemo(
    () => ({ state, user: state.user, signedIn, logout }),
    [state, signedIn, logout],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthContextValue {
  const ctx = useContext(AuthContext);
  if (!ctx) throw new Error('useAuth outside AuthProvider');
  return ctx;
}

export const ROLE_LABEL: Record<Role, string> = {
  admin: 'Administrator',
  radiologist: 'Radiologist',
  technologist: 'Technologist',
};

export const canShare = (role: Role | undefined) => role === 'admin' || role === 'radiologist';
export const isAdmin = (role: Role | undefined) => role === 'admin';
