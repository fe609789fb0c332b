/**
 * Two processes on one data directory: DuckDB lets one process open the fleet database, and the second
 * one is refused with what that means here (another process owns the data directory, its PID, and what
 * to do), not DuckDB's lock error. Once the first process is gone, the database opens.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { DatabaseLocked, openFleetDatabase } from '../../activities/db';

const ROOT = resolve(__dirname, '..', '..');

void describe('one process owns the fleet database', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-lock-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it('refuses a second process with the owner and the fix, and opens once the owner is gone', async () => {
    const file = join(dir, 'fleet.duckdb');
    // The owner: another process holding the database open.
    const owner = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '-e',
        `require('./activities/db').openFleetDatabase(${JSON.stringify(file)}).then(() => { console.log('ready'); setInterval(() => {}, 1000); });`,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((ok, fail) => {
        owner.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && ok());
        owner.on('exit', (code) => fail(new Error(`the owner exited (${code})`)));
      });
      await assert.rejects(openFleetDatabase(file), (err: Error) => {
        assert.ok(err instanceof DatabaseLocked, String(err));
        assert.equal(err.pid, owner.pid);
        assert.match(err.message, new RegExp(`open in another process \\(PID ${owner.pid}\\)`));
        assert.match(err.message, /FLEETGATE_DATA_DIR/);
        assert.doesNotMatch(err.message, /Conflicting lock|duckdb\.org/);
        return true;
      });
    } finally {
      owner.kill('SIGKILL');
      await new Promise((r) => owner.once('exit', r));
    }
    const db = await openFleetDatabase(file);
    await db.close();
  });
});
