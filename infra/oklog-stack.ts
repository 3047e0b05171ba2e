// OkLogStack: one OkLogCluster configured from CDK context (`cdk deploy -c key=value` or the
// "context" block of cdk.json). Environment-agnostic: nothing is looked up at synthesis.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Annotations, type App, Duration, Stack, type StackProps, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { Construct } from 'constructs';
import { OkLogCluster, type OkLogClusterProps, type OkLogFleetProps } from './oklog-cluster.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Every context key the stack reads (documented in docs/DEPLOYING.md). */
export const CONTEXT_KEYS = [
  'stackName',
  'mode',
  'replicationFactor',
  'retention',
  'ingestInstanceType',
  'ingestMin',
  'ingestMax',
  'ingestDesired',
  'ingestVolumeGiB',
  'storeInstanceType',
  'storeMin',
  'storeMax',
  'storeDesired',
  'storeVolumeGiB',
  'nodeInstanceType',
  'nodeMin',
  'nodeMax',
  'nodeDesired',
  'nodeVolumeGiB',
  'vpcId',
  'vpcCidr',
  'availabilityZones',
  'privateSubnetIds',
  'operatorCidrs',
  'forwarderCidrs',
  'allowPublicIngress',
  'tieringBucket',
  'tieringExpirationDays',
  'cloudWatchAgent',
  'detailedMonitoring',
  'clusterName',
  'extraFlags',
  'releaseTarball',
] as const;
export type ContextKey = (typeof CONTEXT_KEYS)[number];
export type Context = Partial<Record<ContextKey, unknown>>;

export interface OkLogStackProps extends StackProps {
  /** Context values (see CONTEXT_KEYS); strings as given by `-c key=value`, or JSON values. */
  readonly context?: Context;
  /** Path of the release tarball (see {@link releaseTarball}). */
  readonly releaseTarball: string;
}

/** The deployable stack: one oklog cluster, configured from context. */
export class OkLogStack extends Stack {
  readonly cluster: OkLogCluster;
  constructor(scope: Construct, id: string, props: OkLogStackProps) {
    super(scope, id, { description: 'oklog: distributed log management cluster', ...props });
    this.cluster = new OkLogCluster(
      this,
      'Cluster',
      clusterPropsFromContext(this, props.context ?? {}, props.releaseTarball),
    );
  }
}

const str = (v: unknown): string | undefined =>
  v === undefined || v === null || v === '' ? undefined : String(v);
function num(key: string, v: unknown): number | undefined {
  const s = str(v);
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isFinite(n)) throw new Error(`context ${key}: not a number: ${s}`);
  return n;
}
function bool(key: string, v: unknown): boolean | undefined {
  if (typeof v === 'boolean') return v;
  const s = str(v)?.toLowerCase();
  if (s === undefined) return undefined;
  if (s === 'true' || s === '1' || s === 'yes') return true;
  if (s === 'false' || s === '0' || s === 'no') return false;
  throw new Error(`context ${key}: expected true or false: ${s}`);
}
function list(v: unknown): string[] | undefined {
  if (Array.isArray(v)) return v.map(String);
  const s = str(v);
  return s === undefined
    ? undefined
    : s
        .split(/[\s,]+/)
        .map((x) => x.trim())
        .filter(Boolean);
}
/** `168h`, `7d` or a number of hours. */
export function parseRetention(v: string): Duration {
  const m = /^(\d+)\s*([hd]?)$/.exec(v.trim());
  if (!m) throw new Error(`context retention: expected e.g. 168h or 7d: ${v}`);
  return m[2] === 'd' ? Duration.days(Number(m[1])) : Duration.hours(Number(m[1]));
}

/** Cluster props from context values (strings from `-c`, or JSON values from cdk.json). */
export function clusterPropsFromContext(
  scope: Construct,
  ctx: Context,
  releaseTarball: string,
): OkLogClusterProps {
  const fleet = (p: 'ingest' | 'store' | 'node'): OkLogFleetProps | undefined => {
    const f: OkLogFleetProps = {
      instanceType: str(ctx[`${p}InstanceType`])
        ? new ec2.InstanceType(String(ctx[`${p}InstanceType`]))
        : undefined,
      minCapacity: num(`${p}Min`, ctx[`${p}Min`]),
      maxCapacity: num(`${p}Max`, ctx[`${p}Max`]),
      desiredCapacity: num(`${p}Desired`, ctx[`${p}Desired`]),
      dataVolumeGiB: num(`${p}VolumeGiB`, ctx[`${p}VolumeGiB`]),
    };
    return Object.values(f).some((x) => x !== undefined) ? f : undefined;
  };
  const mode = (str(ctx.mode) ?? 'split') as OkLogClusterProps['mode'];
  let vpc: ec2.IVpc | undefined;
  const vpcId = str(ctx.vpcId);
  if (vpcId) {
    const azs = list(ctx.availabilityZones);
    const subnets = list(ctx.privateSubnetIds);
    const cidr = str(ctx.vpcCidr);
    if (!azs || !subnets || !cidr) {
      throw new Error(
        'context vpcId needs vpcCidr, availabilityZones and privateSubnetIds (no lookups are made)',
      );
    }
    vpc = ec2.Vpc.fromVpcAttributes(scope, 'ExistingVpc', {
      vpcId,
      vpcCidrBlock: cidr,
      availabilityZones: azs,
      privateSubnetIds: subnets,
    });
    Annotations.of(vpc).acknowledgeWarning(
      '@aws-cdk/aws-ec2:noSubnetRouteTableId',
      'The cluster only places instances in these subnets; it never reads their route tables.',
    );
  }
  const peers = (v: unknown) => list(v)?.map((c) => (c.includes(':') ? ec2.Peer.ipv6(c) : ec2.Peer.ipv4(c)));
  const retention = str(ctx.retention);
  const expiration = num('tieringExpirationDays', ctx.tieringExpirationDays);
  return {
    mode,
    ingestFleet: mode === 'split' ? fleet('ingest') : undefined,
    storeFleet: mode === 'split' ? fleet('store') : undefined,
    nodeFleet: mode === 'ingeststore' ? fleet('node') : undefined,
    replicationFactor: num('replicationFactor', ctx.replicationFactor),
    retention: retention ? parseRetention(retention) : undefined,
    vpc,
    vpcSubnets: vpc ? { subnets: vpc.privateSubnets } : undefined,
    operatorSources: peers(ctx.operatorCidrs),
    forwarderSources: peers(ctx.forwarderCidrs),
    allowPublicIngress: bool('allowPublicIngress', ctx.allowPublicIngress),
    tieringBucket: bool('tieringBucket', ctx.tieringBucket),
    tieringExpiration: expiration === undefined ? undefined : Duration.days(expiration),
    cloudWatchAgent: bool('cloudWatchAgent', ctx.cloudWatchAgent),
    detailedMonitoring: bool('detailedMonitoring', ctx.detailedMonitoring),
    clusterName: str(ctx.clusterName),
    extraFlags: list(ctx.extraFlags),
    releaseTarball,
  };
}

/**
 * The release tarball: the `releaseTarball` context value if given, else `npm pack` of this checkout
 * into .tmp/release/ (works offline; the tarball's content hash names the S3 asset).
 */
export function releaseTarball(ctxValue: unknown): string {
  const given = str(ctxValue);
  if (given) {
    const p = resolve(given);
    if (!existsSync(p)) throw new Error(`context releaseTarball: no such file: ${p}`);
    return p;
  }
  const dir = join(REPO_ROOT, '.tmp', 'release');
  mkdirSync(dir, { recursive: true });
  const out = execFileSync('npm', ['pack', '--silent', '--pack-destination', dir], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {
      ...process.env,
      npm_config_update_notifier: 'false',
      npm_config_audit: 'false',
      npm_config_fund: 'false',
    },
  });
  const name = out.trim().split('\n').pop() ?? '';
  const path = join(dir, name);
  if (!name || !existsSync(path) || !statSync(path).isFile()) {
    const found = readdirSync(dir).filter((f) => f.endsWith('.tgz'));
    throw new Error(
      `npm pack did not produce a tarball in ${dir} (output ${JSON.stringify(out)}; found ${found})`,
    );
  }
  return path;
}

/** Builds the stack from the app's context, with cdk-nag's AWS Solutions checks applied. */
export function buildApp(app: App, tarball?: string): OkLogStack {
  const context: Context = {};
  for (const k of CONTEXT_KEYS) context[k] = app.node.tryGetContext(k);
  const stack = new OkLogStack(app, str(context.stackName) ?? 'OkLog', {
    context,
    releaseTarball: tarball ?? releaseTarball(context.releaseTarball),
  });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
  return stack;
}
