import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import * as client from "../sessiond-client.js";

test("the TypeScript declarations name exactly what the module exports", async () => {
  const declarations = await readFile(new URL("../sessiond-client.d.ts", import.meta.url), "utf8");
  const declared = [...declarations.matchAll(/^export declare (?:class|function|const) (\w+)/gm)]
    .map((m) => m[1])
    .sort();
  assert.deepEqual(declared, Object.keys(client).sort());
});

test("package.json points at the module and its declarations", async () => {
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(pkg.exports["."].default, "./sessiond-client.js");
  assert.equal(pkg.exports["."].types, "./sessiond-client.d.ts");
  assert.equal(pkg.dependencies, undefined, "no runtime dependencies");
});
