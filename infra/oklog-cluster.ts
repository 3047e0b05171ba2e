// OkLogCluster: an oklog cluster on EC2 Auto Scaling groups (one ingest fleet + one store fleet,
// or one ingeststore fleet), least-privilege security groups, IMDSv2-only instances with an
// encrypted data volume, peer discovery by EC2 tag, and an optional S3 tiering bucket.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type CfnElement, CfnOutput, Duration, Names, Stack, Tags, Validations } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import type * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';

/** OK Log's ports (oklog-reference.md §1.2); the node defaults, fixed across the fleet. */
export const PORTS = { api: 7650, fast: 7651, durable: 7652, bulk: 7653, cluster: 7659 } as const;

/** EC2 tag that marks every instance of one cluster; peers are discovered by it. */
export const CLUSTER_TAG = 'oklog:cluster';
/** EC2 tag with the instance's node mode (ingest, store, ingeststore). */
export const ROLE_TAG = 'oklog:role';

/** Where the data volume is attached and mounted. */
const DATA_DEVICE = '/dev/sdf';
const DATA_DIR = '/var/lib/oklog';

export const UNIT_FILE = fileURLToPath(new URL('./systemd/oklog.service', import.meta.url));
export const NODE_START_SCRIPT = fileURLToPath(new URL('./userdata/node-start.sh', import.meta.url));

/** `split`: separate ingest and store fleets. `ingeststore`: one fleet of combined nodes. */
export type OkLogClusterMode = 'split' | 'ingeststore';
/** The node mode a fleet runs (`oklog <mode>`). */
export type OkLogNodeMode = 'ingest' | 'store' | 'ingeststore';

/** Size and shape of one fleet (one Auto Scaling group). */
export interface OkLogFleetProps {
  /** EC2 instance type; Graviton (arm64) types get the arm64 AMI. @default m6i.large */
  readonly instanceType?: ec2.InstanceType;
  /** Fewest instances. Store-capable fleets need at least `replicationFactor`. @default see OkLogCluster.defaults */
  readonly minCapacity?: number;
  /** Most instances the group may scale out to. @default see OkLogCluster.defaults */
  readonly maxCapacity?: number;
  /**
   * Instances to run now. Leave unset to let scaling policies or the console own it (a set value is
   * re-applied on every deploy). @default minCapacity
   */
  readonly desiredCapacity?: number;
  /** Size in GiB of the encrypted gp3 data volume mounted at /var/lib/oklog. @default ingest 50, store 200, ingeststore 200 */
  readonly dataVolumeGiB?: number;
}

/** Properties of {@link OkLogCluster}. */
export interface OkLogClusterProps {
  /** `split` (ingest fleet + store fleet) or `ingeststore` (one fleet, for small installs). @default 'split' */
  readonly mode?: OkLogClusterMode;
  /** The ingest fleet (`split` mode only). */
  readonly ingestFleet?: OkLogFleetProps;
  /** The store fleet (`split` mode only). */
  readonly storeFleet?: OkLogFleetProps;
  /** The ingeststore fleet (`ingeststore` mode only). */
  readonly nodeFleet?: OkLogFleetProps;
  /**
   * Store nodes each segment is written to (`-store.segment-replication-factor`); must not exceed
   * the store-capable fleet's minCapacity. @default 2, or 1 for a one-node ingeststore fleet
   */
  readonly replicationFactor?: number;
  /** How long store nodes keep records (`-store.segment-retain`), whole hours. @default 7 days */
  readonly retention?: Duration;
  /** Existing VPC to run in; nothing is looked up. @default a new VPC (2 AZs, 1 NAT gateway, flow logs) */
  readonly vpc?: ec2.IVpc;
  /** CIDR of the VPC created when `vpc` is not given. @default '10.0.0.0/16' */
  readonly vpcCidr?: string;
  /** Subnets for the instances. @default private subnets with egress */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /**
   * Who may reach the HTTP API (port 7650: query, stats, peers) on every node. @default the VPC CIDR
   * (give sources explicitly if a given `vpc`'s CIDR is a token, so rules can be checked at synthesis)
   */
  readonly operatorSources?: ec2.IPeer[];
  /** Who may write logs: ports 7651-7653 and the acked HTTP path on 7650 of ingest-capable nodes. @default the VPC CIDR */
  readonly forwarderSources?: ec2.IPeer[];
  /** Must be true for any source of 0.0.0.0/0 or ::/0; otherwise synthesis fails. @default false */
  readonly allowPublicIngress?: boolean;
  /** Path of the release tarball (`npm pack` of this project), shipped as an S3 asset. */
  readonly releaseTarball: string;
  /** Create an S3 bucket for segment tiering (encrypted, private, TLS only, expiring). @default false */
  readonly tieringBucket?: boolean;
  /** Objects in the tiering bucket expire after this long. @default 90 days */
  readonly tieringExpiration?: Duration;
  /** Install the CloudWatch agent and publish memory and data-disk metrics (namespace OkLog). @default false */
  readonly cloudWatchAgent?: boolean;
  /** Value of the `oklog:cluster` tag that peers discover each other by. @default a name unique to this construct */
  readonly clusterName?: string;
  /** Extra `oklog` flags for every node, e.g. ['-debug']. @default none */
  readonly extraFlags?: string[];
  /** How long CloudFormation waits for a new instance to report a healthy node. @default 15 minutes */
  readonly startupTimeout?: Duration;
  /** SNS topic for Auto Scaling launch/terminate notifications. @default none */
  readonly notificationsTopic?: sns.ITopic;
  /** One-minute EC2 metrics (extra cost). @default false */
  readonly detailedMonitoring?: boolean;
}

const DEFAULT_FLEETS: Record<
  OkLogNodeMode,
  Required<Omit<OkLogFleetProps, 'desiredCapacity' | 'instanceType'>>
> = {
  ingest: { minCapacity: 1, maxCapacity: 3, dataVolumeGiB: 50 },
  store: { minCapacity: 2, maxCapacity: 6, dataVolumeGiB: 200 },
  ingeststore: { minCapacity: 2, maxCapacity: 4, dataVolumeGiB: 200 },
};

const shq = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;

function isPublic(peer: ec2.IPeer): boolean {
  const cfg = peer.toIngressRuleConfig() as { cidrIp?: string; cidrIpv6?: string };
  return cfg.cidrIp === '0.0.0.0/0' || cfg.cidrIpv6 === '::/0';
}

/**
 * An oklog cluster: Auto Scaling groups of nodes that find each other by EC2 tag, gossip on 7659
 * (TCP and UDP) only among themselves, accept logs only from forwarder sources and queries only from
 * operator sources.
 */
export class OkLogCluster extends Construct {
  /** The fleets by node mode: `ingest` and `store`, or `ingeststore`. */
  readonly fleets: Partial<Record<OkLogNodeMode, autoscaling.AutoScalingGroup>> = {};
  /** Security group of each fleet. */
  readonly securityGroups: Partial<Record<OkLogNodeMode, ec2.SecurityGroup>> = {};
  /** The instances' IAM role. */
  readonly role: iam.Role;
  /** The VPC the cluster runs in. */
  readonly vpc: ec2.IVpc;
  /** The tiering bucket, if enabled. */
  readonly tieringBucket?: s3.Bucket;
  /** The `oklog:cluster` tag value. */
  readonly clusterName: string;

  constructor(scope: Construct, id: string, props: OkLogClusterProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const mode = props.mode ?? 'split';
    if (mode !== 'split' && mode !== 'ingeststore')
      throw new Error(`mode must be split or ingeststore: ${mode}`);
    const roles: OkLogNodeMode[] = mode === 'split' ? ['ingest', 'store'] : ['ingeststore'];
    const fleetProps = (role: OkLogNodeMode): OkLogFleetProps =>
      (role === 'ingest' ? props.ingestFleet : role === 'store' ? props.storeFleet : props.nodeFleet) ?? {};
    if (mode === 'split' && props.nodeFleet) throw new Error('nodeFleet applies to mode ingeststore only');
    if (mode === 'ingeststore' && (props.ingestFleet || props.storeFleet)) {
      throw new Error('ingestFleet/storeFleet apply to mode split only');
    }

    const storeRole: OkLogNodeMode = mode === 'split' ? 'store' : 'ingeststore';
    const storeMin = fleetProps(storeRole).minCapacity ?? DEFAULT_FLEETS[storeRole].minCapacity;
    const replicationFactor = props.replicationFactor ?? Math.min(2, storeMin);
    if (!Number.isInteger(replicationFactor) || replicationFactor < 1) {
      throw new Error(`replicationFactor must be a positive integer: ${replicationFactor}`);
    }
    if (replicationFactor > storeMin) {
      throw new Error(
        `replicationFactor ${replicationFactor} exceeds the ${storeRole} fleet's minCapacity ${storeMin}: ` +
          'segments could not be placed on enough store nodes',
      );
    }
    const retentionHours = (props.retention ?? Duration.days(7)).toHours();
    if (retentionHours < 1) throw new Error('retention must be at least one hour');

    this.clusterName = props.clusterName ?? Names.uniqueResourceName(this, { maxLength: 64 });

    // ---- network ------------------------------------------------------------------------------
    const cidr = props.vpc ? props.vpc.vpcCidrBlock : (props.vpcCidr ?? '10.0.0.0/16');
    this.vpc = props.vpc ?? this.createVpc(cidr);
    const vpcSubnets = props.vpcSubnets ?? { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
    // A literal CIDR (not the VPC's CidrBlock attribute) so that rules can be checked at synthesis.
    const vpcCidr = ec2.Peer.ipv4(cidr);
    const operatorSources = props.operatorSources ?? [vpcCidr];
    const forwarderSources = props.forwarderSources ?? [vpcCidr];
    const publicSources = [...operatorSources, ...forwarderSources].filter(isPublic);
    if (publicSources.length > 0 && !props.allowPublicIngress) {
      throw new Error(
        `ingress from ${publicSources.map((p) => p.uniqueId).join(', ')} opens oklog to every address; ` +
          'set allowPublicIngress: true to allow it',
      );
    }

    for (const role of roles) {
      const sg = new ec2.SecurityGroup(this, `${cap(role)}SecurityGroup`, {
        vpc: this.vpc,
        description: `oklog ${role} nodes of ${this.clusterName}`,
        // Egress is restricted to HTTPS plus the cluster ports between members (below).
        allowAllOutbound: false,
      });
      // HTTPS anywhere: dnf repositories, the npm registry (release dependencies), the S3 release
      // asset, and the EC2/CloudFormation/SSM APIs. DNS, NTP and IMDS are not filtered by SGs.
      sg.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS: packages, release asset, AWS APIs');
      this.securityGroups[role] = sg;
    }
    const members = roles.map((r) => this.securityGroups[r]!);
    const memberPorts: [ec2.Port, string][] = [
      [ec2.Port.tcp(PORTS.cluster), 'oklog gossip (TCP: join, push/pull)'],
      [ec2.Port.udp(PORTS.cluster), 'oklog gossip (UDP: probes)'],
      [ec2.Port.tcp(PORTS.api), 'oklog API between members (segments, replication, queries)'],
    ];
    for (const a of members) {
      for (const b of members) {
        for (const [port, desc] of memberPorts) {
          if (a === b) a.connections.allowInternally(port, desc);
          else a.connections.allowFrom(b, port, desc);
        }
      }
    }
    for (const role of roles) {
      const sg = this.securityGroups[role]!;
      for (const src of operatorSources)
        sg.addIngressRule(src, ec2.Port.tcp(PORTS.api), 'oklog API from operators');
      if (role === 'store') continue;
      for (const src of forwarderSources) {
        sg.addIngressRule(
          src,
          ec2.Port.tcpRange(PORTS.fast, PORTS.bulk),
          'oklog ingest (fast, durable, bulk)',
        );
        sg.addIngressRule(src, ec2.Port.tcp(PORTS.api), 'oklog acked HTTP ingest (POST /ingest/write)');
      }
    }
    if (publicSources.length > 0) {
      for (const sg of members) {
        Validations.of(sg).acknowledge({
          id: 'AwsSolutions-EC23',
          reason: 'The deployer set allowPublicIngress: true for these sources.',
        });
      }
    }

    // ---- storage and release ------------------------------------------------------------------
    if (props.tieringBucket) this.tieringBucket = this.createTieringBucket(props.tieringExpiration);
    const release = new s3assets.Asset(this, 'Release', { path: props.releaseTarball });

    // ---- IAM ----------------------------------------------------------------------------------
    this.role = new iam.Role(this, 'NodeRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: `oklog nodes of ${this.clusterName}`,
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
    });
    // Exactly the release object, nothing else in the assets bucket.
    this.role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['s3:GetObject'],
        resources: [release.bucket.arnForObjects(release.s3ObjectKey)],
      }),
    );
    // Peer discovery; DescribeInstances supports no resource-level permissions.
    this.role.addToPolicy(new iam.PolicyStatement({ actions: ['ec2:DescribeInstances'], resources: ['*'] }));
    // cdk-nag acknowledgements (cdk-nag v3: CDK Validations), each with its justification.
    const role = Validations.of(this.role);
    role.acknowledge({
      id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]',
      reason:
        'AmazonSSMManagedInstanceCore is the documented minimum for SSM Session Manager (operator access).',
    });
    role.acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'ec2:DescribeInstances (peer discovery by tag) and cloudwatch:PutMetricData (namespace-conditioned) ' +
        'support no resource-level permissions.',
    });
    if (this.tieringBucket) {
      this.role.addToPolicy(
        new iam.PolicyStatement({ actions: ['s3:ListBucket'], resources: [this.tieringBucket.bucketArn] }),
      );
      this.role.addToPolicy(
        new iam.PolicyStatement({
          actions: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject'],
          resources: [this.tieringBucket.arnForObjects('*')],
        }),
      );
      const bucketId = stack.getLogicalId(this.tieringBucket.node.defaultChild as CfnElement);
      role.acknowledge({
        id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/*]`,
        reason: 'Nodes read, write and delete segment objects of any name, in the tiering bucket only.',
      });
    }
    if (props.cloudWatchAgent) {
      this.role.addToPolicy(
        new iam.PolicyStatement({
          actions: ['cloudwatch:PutMetricData'],
          resources: ['*'],
          conditions: { StringEquals: { 'cloudwatch:namespace': 'OkLog' } },
        }),
      );
    }
    const instanceProfile = new iam.InstanceProfile(this, 'InstanceProfile', { role: this.role });

    // ---- fleets -------------------------------------------------------------------------------
    const unit = readFileSync(UNIT_FILE, 'utf8');
    const nodeStart = readFileSync(NODE_START_SCRIPT, 'utf8');
    const startupTimeout = props.startupTimeout ?? Duration.minutes(15);
    for (const role of roles) {
      const given = Object.fromEntries(Object.entries(fleetProps(role)).filter(([, v]) => v !== undefined));
      const f: OkLogFleetProps & (typeof DEFAULT_FLEETS)[OkLogNodeMode] = {
        ...DEFAULT_FLEETS[role],
        ...given,
      };
      const instanceType = f.instanceType ?? new ec2.InstanceType('m6i.large');
      const desired = f.desiredCapacity;
      if (!(f.minCapacity >= 0 && f.minCapacity <= f.maxCapacity && f.maxCapacity >= 1)) {
        throw new Error(`${role} fleet: need 0 <= minCapacity <= maxCapacity, maxCapacity >= 1`);
      }
      if (desired !== undefined && (desired < f.minCapacity || desired > f.maxCapacity)) {
        throw new Error(`${role} fleet: desiredCapacity must lie between minCapacity and maxCapacity`);
      }
      if (!(Number.isInteger(f.dataVolumeGiB) && f.dataVolumeGiB >= 1)) {
        throw new Error(`${role} fleet: dataVolumeGiB must be a positive integer`);
      }
      const fleet = new Construct(this, `${cap(role)}Fleet`);
      const userData = ec2.UserData.forLinux();
      const launchTemplate = new ec2.LaunchTemplate(fleet, 'LaunchTemplate', {
        instanceType,
        machineImage: ec2.MachineImage.latestAmazonLinux2023({
          cpuType:
            instanceType.architecture === ec2.InstanceArchitecture.ARM_64
              ? ec2.AmazonLinuxCpuType.ARM_64
              : ec2.AmazonLinuxCpuType.X86_64,
        }),
        securityGroup: this.securityGroups[role],
        instanceProfile,
        userData,
        requireImdsv2: true,
        httpTokens: ec2.LaunchTemplateHttpTokens.REQUIRED,
        httpPutResponseHopLimit: 1,
        detailedMonitoring: props.detailedMonitoring ?? false,
        blockDevices: [
          {
            deviceName: '/dev/xvda',
            volume: ec2.BlockDeviceVolume.ebs(20, {
              encrypted: true,
              volumeType: ec2.EbsDeviceVolumeType.GP3,
            }),
          },
          {
            deviceName: DATA_DEVICE,
            volume: ec2.BlockDeviceVolume.ebs(f.dataVolumeGiB, {
              encrypted: true,
              volumeType: ec2.EbsDeviceVolumeType.GP3,
              deleteOnTermination: true,
            }),
          },
        ],
      });
      const asg = new autoscaling.AutoScalingGroup(fleet, 'Group', {
        vpc: this.vpc,
        vpcSubnets,
        launchTemplate,
        minCapacity: f.minCapacity,
        maxCapacity: f.maxCapacity,
        desiredCapacity: desired,
        cooldown: Duration.minutes(5),
        healthChecks: autoscaling.HealthChecks.ec2({ gracePeriod: startupTimeout }),
        signals: autoscaling.Signals.waitForMinCapacity({ timeout: startupTimeout }),
        // One instance at a time, each replacement signalling a healthy node before the next.
        updatePolicy: autoscaling.UpdatePolicy.rollingUpdate({
          maxBatchSize: 1,
          minInstancesInService: Math.max(0, f.minCapacity - 1),
          pauseTime: startupTimeout,
        }),
        groupMetrics: [autoscaling.GroupMetrics.all()],
        notifications: props.notificationsTopic ? [{ topic: props.notificationsTopic }] : undefined,
      });
      Tags.of(fleet).add(CLUSTER_TAG, this.clusterName);
      Tags.of(fleet).add(ROLE_TAG, role);
      Tags.of(fleet).add('Name', `oklog-${role}-${this.clusterName}`, { priority: 300 });
      // Instances call ec2:DescribeInstances and cfn-signal at boot: the role's policy must exist.
      asg.node.addDependency(this.role);
      if (!props.notificationsTopic) {
        Validations.of(asg).acknowledge({
          id: 'AwsSolutions-AS3',
          reason:
            'Scaling activity is in the group activity history and CloudTrail; pass notificationsTopic for SNS notifications.',
        });
      }

      const cfnAsg = asg.node.defaultChild as autoscaling.CfnAutoScalingGroup;
      const settings: Record<string, string> = {
        OKLOG_MODE: role,
        OKLOG_DATA_DIR: DATA_DIR,
        OKLOG_DATA_DEVICE: DATA_DEVICE,
        OKLOG_REPLICATION_FACTOR: String(replicationFactor),
        OKLOG_RETAIN: `${retentionHours}h`,
        OKLOG_EXTRA_FLAGS: (props.extraFlags ?? []).join(' '),
        OKLOG_DISCOVERY_TAG_KEY: CLUSTER_TAG,
        OKLOG_DISCOVERY_TAG_VALUE: this.clusterName,
        OKLOG_REGION: stack.region,
        OKLOG_RELEASE_S3_URL: release.s3ObjectUrl,
        OKLOG_TIERING_BUCKET: this.tieringBucket?.bucketName ?? '',
        OKLOG_CLOUDWATCH_AGENT: props.cloudWatchAgent ? '1' : '0',
        OKLOG_CFN_STACK: stack.stackName,
        OKLOG_CFN_RESOURCE: cfnAsg.logicalId,
        OKLOG_UNIT_SOURCE: '/run/oklog/oklog.service',
      };
      userData.addCommands(...renderUserData(settings, unit, nodeStart));
      this.fleets[role] = asg;
    }

    // ---- outputs ------------------------------------------------------------------------------
    const find = (role: OkLogNodeMode, query: string) =>
      `aws ec2 describe-instances --region ${stack.region} --filters Name=tag:${CLUSTER_TAG},Values=${this.clusterName} ` +
      `Name=tag:${ROLE_TAG},Values=${role} Name=instance-state-name,Values=running --query '${query}' --output text`;
    const storeIps = find(storeRole, 'Reservations[].Instances[].PrivateIpAddress');
    const anyStore = `$(${find(storeRole, 'Reservations[0].Instances[0].PrivateIpAddress')})`;
    new CfnOutput(this, 'ClusterName', {
      value: this.clusterName,
      description: `Value of the ${CLUSTER_TAG} tag`,
    });
    for (const role of roles) {
      new CfnOutput(this, `${cap(role)}AutoScalingGroup`, { value: this.fleets[role]!.autoScalingGroupName });
    }
    new CfnOutput(this, 'ApiEndpoints', {
      description: 'The API of every node: http://<private IP>:7650 (list the IPs with FindNodesCommand)',
      value: `http://<private IP of any ${CLUSTER_TAG}=${this.clusterName} instance>:${PORTS.api}`,
    });
    new CfnOutput(this, 'FindNodesCommand', {
      description: `Private IPs of the ${storeRole} nodes`,
      value: storeIps,
    });
    new CfnOutput(this, 'OklogctlCommand', {
      description:
        'Check the cluster from a host that can reach port 7650 (VPN, peering, or SsmTunnelCommand)',
      value: `oklogctl peers -store ${anyStore}:${PORTS.api}`,
    });
    new CfnOutput(this, 'SsmTunnelCommand', {
      description: 'Forward localhost:7650 to a store node, then: oklogctl peers -store localhost:7650',
      value:
        `aws ssm start-session --region ${stack.region} --document-name AWS-StartPortForwardingSession ` +
        `--parameters portNumber=${PORTS.api},localPortNumber=${PORTS.api} ` +
        `--target $(${find(storeRole, 'Reservations[0].Instances[0].InstanceId')})`,
    });
  }

  private createVpc(cidr: string): ec2.Vpc {
    const vpc = new ec2.Vpc(this, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr(cidr),
      maxAzs: 2,
      natGateways: 1,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
        { name: 'nodes', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 22 },
      ],
    });
    const flowLogs = new logs.LogGroup(this, 'FlowLogs', { retention: logs.RetentionDays.ONE_MONTH });
    vpc.addFlowLog('FlowLog', { destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogs) });
    return vpc;
  }

  private createTieringBucket(expiration = Duration.days(90)): s3.Bucket {
    const scope = new Construct(this, 'Tiering');
    // Grant log delivery through a bucket policy, not the deprecated LogDeliveryWrite ACL.
    scope.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);
    const common = {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
    };
    const accessLogs = new s3.Bucket(scope, 'AccessLogs', {
      ...common,
      lifecycleRules: [{ expiration: Duration.days(90) }],
    });
    Validations.of(accessLogs).acknowledge({
      id: 'AwsSolutions-S1',
      reason: 'This is the access-log bucket of the tiering bucket; logging it would recurse.',
    });
    return new s3.Bucket(scope, 'Bucket', {
      ...common,
      serverAccessLogsBucket: accessLogs,
      serverAccessLogsPrefix: 'tiering/',
      lifecycleRules: [{ expiration, abortIncompleteMultipartUploadAfter: Duration.days(1) }],
    });
  }
}

function cap(s: string): string {
  return s[0].toUpperCase() + s.slice(1);
}

/**
 * Drops blank and comment-only lines (user data is limited to 16 KiB); keeps a leading shebang and
 * shellcheck directives.
 */
export function stripComments(text: string): string {
  const keep = (line: string, i: number) =>
    line.trim() !== '' &&
    (!/^\s*#/.test(line) || (i === 0 && line.startsWith('#!')) || /^\s*# shellcheck /.test(line));
  return text.split('\n').filter(keep).join('\n');
}

/**
 * The instance user data: exported settings, the systemd unit written to $OKLOG_UNIT_SOURCE, then
 * infra/userdata/node-start.sh (comments stripped from both).
 */
export function renderUserData(settings: Record<string, string>, unit: string, nodeStart: string): string[] {
  const lines = ['# oklog: settings rendered by OkLogCluster, then infra/userdata/node-start.sh'];
  for (const [k, v] of Object.entries(settings)) lines.push(`export ${k}=${shq(v)}`);
  const unitPath = settings.OKLOG_UNIT_SOURCE;
  lines.push(`mkdir -p "$(dirname "${unitPath}")"`, `cat >"${unitPath}" <<'OKLOG_UNIT_EOF'`);
  lines.push(stripComments(unit), 'OKLOG_UNIT_EOF');
  lines.push(stripComments(nodeStart.replace(/^#!.*\n/, '')));
  return lines;
}
