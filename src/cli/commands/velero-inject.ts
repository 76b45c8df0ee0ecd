import { readFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import { TenderError } from '../../errors/errors.js';
import { injectRestoreInit } from '../../velero/restore-init.js';
import { positiveInt } from '../args.js';

interface InjectCliOptions {
  image?: string;
  secret: string;
  wait: number;
}

/**
 * `tender velero-inject [FILE]`: the manifests (YAML, FILE or stdin) with tender's restore init
 * container added to each pod template for the emptyDir volumes its tender.io/backup-volumes
 * annotation names, on stdout (comments are not kept). What it added goes to stderr.
 */
export function registerVeleroInject(program: Command): void {
  program
    .command('velero-inject')
    .description("add the init container that restores a pod's emptyDir volumes after a Velero restore to manifests (stdin or FILE → stdout)")
    .argument('[file]', 'YAML manifests (default: stdin)')
    .option('--image <image>', 'the tender image the init container runs')
    .option('--secret <name>', "Secret in the pod's namespace with the keys repository, password, aws-access-key-id, aws-secret-access-key", 'tender')
    .addOption(new Option('--wait <seconds>', 'how long the init container waits for a snapshot the agent is still writing').argParser(positiveInt).default(300))
    .action(async (file: string | undefined, opts: InjectCliOptions) => {
      if (!opts.image) throw new TenderError('TENDER_USAGE', 'velero-inject needs --image', { hint: 'the tender image, e.g. --image registry.example.com/tender:0.1.0' });
      const what = file ?? 'stdin';
      let text: string;
      try {
        text = file ? await readFile(file, 'utf8') : await readStdin();
      } catch (err) {
        throw new TenderError('TENDER_USAGE', `cannot read ${what}: ${(err as Error).message}`);
      }
      // Loaded here: the YAML library is the largest module tree of the CLI, and only this command needs it.
      const { parseAllDocuments, stringify } = await import('yaml');
      const out: string[] = [];
      for (const doc of parseAllDocuments(text)) {
        if (doc.errors.length > 0) throw new TenderError('TENDER_USAGE', `${what} is not valid YAML: ${doc.errors[0]!.message}`);
        const manifest: unknown = doc.toJS();
        if (manifest === null || manifest === undefined) continue;
        const added = injectRestoreInit(manifest, { image: opts.image, secret: opts.secret, waitSeconds: opts.wait });
        const m = manifest as { kind?: string; metadata?: { name?: string } };
        const name = `${m.kind ?? 'object'} ${m.metadata?.name ?? ''}`.trim();
        process.stderr.write(
          added.length > 0 ? `${name}: restores ${added.join(', ')}\n` : `${name}: nothing to add (no emptyDir volume named by tender.io/backup-volumes lacks its restore init container)\n`,
        );
        out.push(stringify(manifest));
      }
      process.stdout.write(out.join('---\n'));
    });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
