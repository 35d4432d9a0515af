// Validates a .glb with the Khronos glTF validator; prints its report as JSON.
// Usage: node validate_gltf.mjs FILE.glb
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

const path = process.argv[2];
const data = new Uint8Array(await readFile(path));
const report = await validator.validateBytes(data, { uri: path, maxIssues: 100 });
process.stdout.write(JSON.stringify(report));
