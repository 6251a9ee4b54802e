/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// Built into ../spa_dist/main, served by nginx at "/" with an SPA fallback to
// index.html. During `npm run dev`, /api and /pacs-viewer are proxied to a running
// appliance (NN_DEV_BACKEND, default http://127.0.0.1:8080).
const backend = process.env.NN_DEV_BACKEND ?? 'http://127.0.0.1:8080';

export default defineConfig({
  base: '/',
  plugins: [react()],
  build: {
    outDir: '../spa_dist/main',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: {
      '/api': { target: backend, changeOrigin: false },
      '/pacs-viewer': { target: backend, changeOrigin: false },
    },
  },
  test: {
    environment: 'happy-dom',
    include: ['src/**/*.test.{ts,tsx}'],
    restoreMocks: true,
  },
});
