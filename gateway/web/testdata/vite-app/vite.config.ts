import { defineConfig } from "vite";

// Relative asset URLs, so that the built page works wherever it is served.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true },
});
