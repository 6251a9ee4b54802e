// Client-side routes (nginx serves index.html for each of them).
export const APP_ROUTES = [
  '/',
  '/login',
  '/shares',
  '/admin/users',
  '/admin/modalities',
  '/admin/system',
  '/admin/audit',
] as const;

export function isAppRoute(pathname: string): boolean {
  const p = pathname.length > 1 ? pathname.replace(/\/+$/, '') : pathname;
  return (APP_ROUTES as readonly string[]).includes(p);
}
