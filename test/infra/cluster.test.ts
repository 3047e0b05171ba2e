// OkLogCluster / OkLogStack: template assertions (every port rule, IMDSv2, encryption, fleets,
// IAM, outputs, user data), cdk-nag AwsSolutions findings, and synthesis-time validation.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { App, type CfnElement, Stack } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { AwsSolutionsChecks } from 'cdk-nag';
import { type Context, OkLogStack } from '../../infra/oklog-stack.ts';
import { fakeRelease, have } from './helpers.ts';

const release = fakeRelease();
after(() => rmSync(release.dir, { recursive: true, force: true }));

// biome-ignore lint/suspicious/noExplicitAny: synthesized CloudFormation JSON is untyped.
type Json = Record<string, any>;

function synth(context: Context) {
  const app = new App();
  const stack = new OkLogStack(app, 'OkLog', { context, releaseTarball: release.tarball });
  const template = Template.fromStack(stack);
  const json = template.toJSON() as Json;
  const id = (c: { node: { defaultChild?: unknown } }) =>
    stack.getLogicalId(c.node.defaultChild as CfnElement);
  return { app, stack, template, json, id };
}

function resources(json: Json, type: string): [string, Json][] {
  return Object.entries(json.Resources as Record<string, Json>).filter(([, r]) => r.Type === type);
}

/** Every ingress/egress rule as `in|out <group> <proto> <from>-<to> <peer>`, groups by fleet name. */
function sgRules(json: Json, names: Record<string, string>): string[] {
  const ref = (v: Json | undefined) => {
    const lid = v?.['Fn::GetAtt']?.[0] ?? v?.Ref;
    return names[lid] ?? `?${JSON.stringify(v)}`;
  };
  const peer = (r: Json, sgKey: string) =>
    r.CidrIp ?? r.CidrIpv6 ?? (r[sgKey] ? `sg:${ref(r[sgKey])}` : `?${JSON.stringify(r)}`);
  const fmt = (dir: string, group: string, r: Json, sgKey: string) =>
    `${dir} ${group} ${r.IpProtocol} ${r.FromPort}-${r.ToPort} ${peer(r, sgKey)}`;
  const out: string[] = [];
  for (const [lid, sg] of resources(json, 'AWS::EC2::SecurityGroup')) {
    const g = names[lid] ?? lid;
    for (const r of sg.Properties.SecurityGroupIngress ?? [])
      out.push(fmt('in', g, r, 'SourceSecurityGroupId'));
    for (const r of sg.Properties.SecurityGroupEgress ?? [])
      out.push(fmt('out', g, r, 'DestinationSecurityGroupId'));
  }
  for (const [, r] of resources(json, 'AWS::EC2::SecurityGroupIngress')) {
    out.push(fmt('in', ref(r.Properties.GroupId), r.Properties, 'SourceSecurityGroupId'));
  }
  for (const [, r] of resources(json, 'AWS::EC2::SecurityGroupEgress')) {
    out.push(fmt('out', ref(r.Properties.GroupId), r.Properties, 'DestinationSecurityGroupId'));
  }
  return out.sort();
}

/** The rules members need between (and within) their groups. */
function memberRules(groups: string[]): string[] {
  const rules: string[] = [];
  for (const a of groups) {
    for (const b of groups) {
      for (const [proto, port] of [
        ['tcp', 7659],
        ['udp', 7659],
        ['tcp', 7650],
      ] as const) {
        rules.push(`in ${a} ${proto} ${port}-${port} sg:${b}`, `out ${b} ${proto} ${port}-${port} sg:${a}`);
      }
    }
  }
  return rules;
}

/** The user data of a launch template with CloudFormation intrinsics shown as <<...>>. */
function userData(lt: Json): string {
  const parts = lt.Properties.LaunchTemplateData.UserData['Fn::Base64']['Fn::Join'][1] as unknown[];
  return parts.map((p) => (typeof p === 'string' ? p : `<<${JSON.stringify(p)}>>`)).join('');
}

function nagViolations(app: App, stack: Stack) {
  return new AwsSolutionsChecks(app).validateScope(stack).violations;
}

describe('split cluster (ingest fleet + store fleet)', () => {
  const s = synth({
    operatorCidrs: '192.0.2.0/24',
    forwarderCidrs: '198.51.100.0/24, 203.0.113.0/24',
    ingestMin: '2',
    ingestMax: '4',
    ingestVolumeGiB: '80',
    storeMin: 3,
    storeMax: 6,
    storeDesired: 3,
    storeVolumeGiB: 300,
    storeInstanceType: 'm7g.large',
    replicationFactor: '3',
    retention: '14d',
    clusterName: 'logs-prod',
  });
  const { cluster } = s.stack as OkLogStack;
  const sgIds = { ingest: s.id(cluster.securityGroups.ingest!), store: s.id(cluster.securityGroups.store!) };
  const names = { [sgIds.ingest]: 'ingest', [sgIds.store]: 'store' };
  const asgIds = { ingest: s.id(cluster.fleets.ingest!), store: s.id(cluster.fleets.store!) };
  const lts = Object.fromEntries(
    (['ingest', 'store'] as const).map((role) => {
      const ltId = s.json.Resources[asgIds[role]].Properties.LaunchTemplate.LaunchTemplateId.Ref;
      return [role, s.json.Resources[ltId] as Json];
    }),
  ) as Record<'ingest' | 'store', Json>;

  it('has exactly the security group rules the cluster needs, and nothing from 0.0.0.0/0', () => {
    const expected = [
      ...memberRules(['ingest', 'store']),
      // operators: the API on every node
      'in ingest tcp 7650-7650 192.0.2.0/24',
      'in store tcp 7650-7650 192.0.2.0/24',
      // forwarders: fast/durable/bulk and the acked HTTP path, on ingest nodes only
      'in ingest tcp 7651-7653 198.51.100.0/24',
      'in ingest tcp 7650-7650 198.51.100.0/24',
      'in ingest tcp 7651-7653 203.0.113.0/24',
      'in ingest tcp 7650-7650 203.0.113.0/24',
      // egress: HTTPS only, besides the member ports
      'out ingest tcp 443-443 0.0.0.0/0',
      'out store tcp 443-443 0.0.0.0/0',
    ].sort();
    assert.deepEqual(sgRules(s.json, names), expected);
  });

  it('opens gossip 7659 over both TCP and UDP between the fleets', () => {
    for (const [to, from] of [
      ['ingest', 'store'],
      ['store', 'ingest'],
      ['store', 'store'],
      ['ingest', 'ingest'],
    ] as const) {
      for (const proto of ['tcp', 'udp']) {
        s.template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
          IpProtocol: proto,
          FromPort: 7659,
          ToPort: 7659,
          GroupId: { 'Fn::GetAtt': [sgIds[to], 'GroupId'] },
          SourceSecurityGroupId: { 'Fn::GetAtt': [sgIds[from], 'GroupId'] },
        });
      }
    }
  });

  it('requires IMDSv2 with hop limit 1 and encrypts every EBS volume', () => {
    s.template.resourceCountIs('AWS::EC2::LaunchTemplate', 2);
    for (const lt of Object.values(lts)) {
      const data = lt.Properties.LaunchTemplateData;
      assert.deepEqual(data.MetadataOptions, { HttpTokens: 'required', HttpPutResponseHopLimit: 1 });
      assert.equal(data.BlockDeviceMappings.length, 2);
      for (const bdm of data.BlockDeviceMappings) {
        assert.equal(bdm.Ebs.Encrypted, true, `${bdm.DeviceName} encrypted`);
        assert.equal(bdm.Ebs.VolumeType, 'gp3');
      }
      assert.equal(data.BlockDeviceMappings[1].DeviceName, '/dev/sdf');
    }
    assert.equal(lts.ingest.Properties.LaunchTemplateData.BlockDeviceMappings[1].Ebs.VolumeSize, 80);
    assert.equal(lts.store.Properties.LaunchTemplateData.BlockDeviceMappings[1].Ebs.VolumeSize, 300);
    assert.equal(lts.ingest.Properties.LaunchTemplateData.InstanceType, 'm6i.large');
    assert.equal(lts.store.Properties.LaunchTemplateData.InstanceType, 'm7g.large');
  });

  it('takes the AMI from a deploy-time SSM parameter (AL2023, per architecture) and makes no lookups', () => {
    const params = s.json.Parameters as Record<string, Json>;
    const amiParams = Object.entries(params).filter(
      ([, p]) => p.Type === 'AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>',
    );
    assert.deepEqual(amiParams.map(([, p]) => p.Default).sort(), [
      '/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64',
      '/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64',
    ]);
    for (const lt of Object.values(lts)) {
      const ref = lt.Properties.LaunchTemplateData.ImageId.Ref;
      assert.ok(
        amiParams.some(([k]) => k === ref),
        'ImageId refers to the SSM parameter',
      );
    }
    assert.equal(s.json.Mappings, undefined);
    const missing = s.app.synth().manifest.missing;
    assert.ok(!missing || missing.length === 0, `context lookups: ${JSON.stringify(missing)}`);
  });

  it('sizes the fleets and waits for healthy-node signals', () => {
    s.template.resourceCountIs('AWS::AutoScaling::AutoScalingGroup', 2);
    const ingest = s.json.Resources[asgIds.ingest];
    const store = s.json.Resources[asgIds.store];
    assert.equal(ingest.Properties.MinSize, '2');
    assert.equal(ingest.Properties.MaxSize, '4');
    assert.equal(ingest.Properties.DesiredCapacity, undefined);
    assert.equal(store.Properties.MinSize, '3');
    assert.equal(store.Properties.MaxSize, '6');
    assert.equal(store.Properties.DesiredCapacity, '3');
    assert.deepEqual(ingest.CreationPolicy.ResourceSignal, { Count: 2, Timeout: 'PT15M' });
    assert.deepEqual(store.CreationPolicy.ResourceSignal, { Count: 3, Timeout: 'PT15M' });
    for (const [role, asg] of [
      ['ingest', ingest],
      ['store', store],
    ] as const) {
      assert.equal(asg.UpdatePolicy.AutoScalingRollingUpdate.WaitOnResourceSignals, true);
      assert.equal(asg.UpdatePolicy.AutoScalingRollingUpdate.MaxBatchSize, 1);
      assert.deepEqual(
        asg.Properties.Tags.filter((t: Json) => t.Key.startsWith('oklog:')),
        [
          { Key: 'oklog:cluster', PropagateAtLaunch: true, Value: 'logs-prod' },
          { Key: 'oklog:role', PropagateAtLaunch: true, Value: role },
        ],
      );
      // the role's policy (describe, signal) exists before any instance boots
      assert.ok(asg.DependsOn.some((d: string) => d.startsWith('ClusterNodeRoleDefaultPolicy')));
    }
  });

  it('gives the instances only SSM, the release object, EC2 describe and the stack signal', () => {
    const [[, role]] = resources(s.json, 'AWS::IAM::Role').filter(([k]) => k.startsWith('ClusterNodeRole'));
    assert.deepEqual(role.Properties.ManagedPolicyArns, [
      {
        'Fn::Join': [
          '',
          ['arn:', { Ref: 'AWS::Partition' }, ':iam::aws:policy/AmazonSSMManagedInstanceCore'],
        ],
      },
    ]);
    const [[, policy]] = resources(s.json, 'AWS::IAM::Policy').filter(([k]) =>
      k.startsWith('ClusterNodeRole'),
    );
    const statements = policy.Properties.PolicyDocument.Statement as Json[];
    assert.deepEqual(
      statements.map((st) => st.Action),
      ['s3:GetObject', 'ec2:DescribeInstances', 'cloudformation:SignalResource'],
    );
    assert.match(JSON.stringify(statements[0].Resource), /cdk-hnb659fds-assets.*\/[0-9a-f]{64}\.tgz"/);
    assert.equal(statements[1].Resource, '*');
    assert.deepEqual(statements[2].Resource, { Ref: 'AWS::StackId' });
    s.template.resourceCountIs('AWS::S3::Bucket', 0);
  });

  it('renders user data: settings, the systemd unit, node-start.sh, under 16 KiB', () => {
    const store = userData(lts.store);
    assert.ok(store.startsWith('#!/bin/bash\n'));
    for (const line of [
      "export OKLOG_MODE='store'",
      "export OKLOG_REPLICATION_FACTOR='3'",
      "export OKLOG_RETAIN='336h'",
      "export OKLOG_DISCOVERY_TAG_KEY='oklog:cluster'",
      "export OKLOG_DISCOVERY_TAG_VALUE='logs-prod'",
      "export OKLOG_DATA_DEVICE='/dev/sdf'",
      `export OKLOG_CFN_RESOURCE='${asgIds.store}'`,
      "export OKLOG_CFN_STACK='OkLog'",
      'ExecStart=/usr/bin/env oklog $OKLOG_MODE $OKLOG_FLAGS',
      'fetch_private_ip() {',
      'main "$@"',
    ]) {
      assert.ok(store.includes(line), `user data has ${line}`);
    }
    assert.match(store, /export OKLOG_RELEASE_S3_URL='<<.*s3:\/\/cdk-hnb659fds-assets-.*\.tgz.*>>'/);
    assert.ok(userData(lts.ingest).includes("export OKLOG_MODE='ingest'"));
    for (const lt of Object.values(lts)) {
      // 16 KiB is EC2's limit before base64; intrinsics (<<...>>) resolve to shorter strings.
      assert.ok(
        Buffer.byteLength(userData(lt)) < 15 * 1024,
        `user data is ${Buffer.byteLength(userData(lt))} B`,
      );
    }
  });

  it('passes shellcheck as rendered', { skip: !have('shellcheck') && 'shellcheck is not installed' }, () => {
    const script = userData(lts.store).replace(/<<.*?>>/g, 'X');
    const r = spawnSync('shellcheck', ['-s', 'bash', '-'], { input: script, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  it('outputs the API endpoints and the oklogctl command', () => {
    const outputs = s.json.Outputs as Record<string, Json>;
    const byName = (name: string) => {
      const e = Object.entries(outputs).find(([k]) => k.startsWith(`Cluster${name}`));
      assert.ok(e, `output ${name}`);
      return JSON.stringify(e[1].Value);
    };
    assert.equal(byName('ClusterName'), '"logs-prod"');
    assert.match(byName('ApiEndpoints'), /:7650/);
    assert.match(byName('FindNodesCommand'), /describe-instances.*tag:oklog:cluster,Values=logs-prod/);
    assert.match(byName('OklogctlCommand'), /oklogctl peers -store \$\(aws ec2 describe-instances.*\):7650/);
    assert.match(byName('SsmTunnelCommand'), /AWS-StartPortForwardingSession/);
    assert.deepEqual(JSON.parse(byName('IngestAutoScalingGroup')), { Ref: asgIds.ingest });
    assert.deepEqual(JSON.parse(byName('StoreAutoScalingGroup')), { Ref: asgIds.store });
  });

  it('creates a VPC with flow logs and runs nodes in its private subnets', () => {
    s.template.resourceCountIs('AWS::EC2::VPC', 1);
    s.template.hasResourceProperties('AWS::EC2::VPC', { CidrBlock: '10.0.0.0/16' });
    s.template.resourceCountIs('AWS::EC2::FlowLog', 1);
    const subnets = s.json.Resources[asgIds.store].Properties.VPCZoneIdentifier as Json[];
    assert.equal(subnets.length, 2);
    for (const sub of subnets) assert.match(sub.Ref, /nodesSubnet/);
  });

  it('is clean under cdk-nag AwsSolutionsChecks; the only CDK warning is the one asked for', () => {
    assert.deepEqual(nagViolations(s.app, s.stack), []);
    // storeDesired was set: CDK rightly warns that each deploy resets the group's size.
    const warnings = Annotations.fromStack(s.stack).findWarning('*', Match.anyValue());
    assert.deepEqual(
      warnings.map((w) => [w.id, /desiredCapacitySet/.test(String(w.entry.data))]),
      [['/OkLog/Cluster/StoreFleet/Group', true]],
    );
    assert.deepEqual(Annotations.fromStack(s.stack).findError('*', Match.anyValue()), []);
  });
});

describe('ingeststore cluster in an existing VPC, with tiering and the CloudWatch agent', () => {
  const s = synth({
    mode: 'ingeststore',
    nodeMin: '1',
    nodeMax: '1',
    vpcId: 'vpc-0123456789abcdef0',
    vpcCidr: '10.20.0.0/16',
    availabilityZones: 'eu-west-1a,eu-west-1b',
    privateSubnetIds: 'subnet-aaaa1111,subnet-bbbb2222',
    forwarderCidrs: '0.0.0.0/0',
    allowPublicIngress: 'true',
    tieringBucket: 'true',
    tieringExpirationDays: '30',
    cloudWatchAgent: 'true',
  });
  const { cluster } = s.stack as OkLogStack;
  const sgId = s.id(cluster.securityGroups.ingeststore!);
  const asgId = s.id(cluster.fleets.ingeststore!);
  const asg = s.json.Resources[asgId];
  const lt = s.json.Resources[asg.Properties.LaunchTemplate.LaunchTemplateId.Ref];

  it('has one fleet with self-referencing member rules; 0.0.0.0/0 only because it was asked for', () => {
    s.template.resourceCountIs('AWS::AutoScaling::AutoScalingGroup', 1);
    assert.deepEqual(
      sgRules(s.json, { [sgId]: 'ingeststore' }),
      [
        ...memberRules(['ingeststore']),
        'in ingeststore tcp 7650-7650 10.20.0.0/16',
        'in ingeststore tcp 7651-7653 0.0.0.0/0',
        'in ingeststore tcp 7650-7650 0.0.0.0/0',
        'out ingeststore tcp 443-443 0.0.0.0/0',
      ].sort(),
    );
    assert.equal(asg.Properties.MinSize, '1');
    assert.ok(userData(lt).includes("export OKLOG_REPLICATION_FACTOR='1'"), 'one node: factor 1');
    assert.ok(userData(lt).includes("export OKLOG_MODE='ingeststore'"));
  });

  it('uses the given VPC and subnets without creating one', () => {
    s.template.resourceCountIs('AWS::EC2::VPC', 0);
    assert.deepEqual(asg.Properties.VPCZoneIdentifier, ['subnet-aaaa1111', 'subnet-bbbb2222']);
    s.template.hasResourceProperties('AWS::EC2::SecurityGroup', { VpcId: 'vpc-0123456789abcdef0' });
  });

  it('creates an encrypted, private, TLS-only, expiring tiering bucket the nodes can use', () => {
    const bucketId = s.id(cluster.tieringBucket!);
    const bucket = s.json.Resources[bucketId].Properties;
    assert.deepEqual(bucket.BucketEncryption.ServerSideEncryptionConfiguration, [
      { ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } },
    ]);
    assert.deepEqual(bucket.PublicAccessBlockConfiguration, {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    assert.ok(
      bucket.LifecycleConfiguration.Rules.some(
        (r: Json) => r.ExpirationInDays === 30 && r.Status === 'Enabled',
      ),
    );
    assert.ok(bucket.LoggingConfiguration.DestinationBucketName);
    s.template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: bucketId },
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Action: 's3:*',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        ]),
      },
    });
    const [[, policy]] = resources(s.json, 'AWS::IAM::Policy').filter(([k]) =>
      k.startsWith('ClusterNodeRole'),
    );
    const st = policy.Properties.PolicyDocument.Statement as Json[];
    assert.ok(st.some((x) => x.Action === 's3:ListBucket' && x.Resource['Fn::GetAtt'][0] === bucketId));
    assert.ok(
      st.some(
        (x) =>
          JSON.stringify(x.Action) === '["s3:GetObject","s3:PutObject","s3:DeleteObject"]' &&
          JSON.stringify(x.Resource).includes(bucketId),
      ),
    );
    assert.ok(
      st.some(
        (x) =>
          x.Action === 'cloudwatch:PutMetricData' &&
          x.Condition.StringEquals['cloudwatch:namespace'] === 'OkLog',
      ),
    );
    assert.match(userData(lt), /export OKLOG_TIERING_BUCKET='<<\{"Ref":"ClusterTieringBucket/);
    assert.ok(userData(lt).includes("export OKLOG_CLOUDWATCH_AGENT='1'"));
  });

  it('is clean under cdk-nag AwsSolutionsChecks (public ingress acknowledged)', () => {
    assert.deepEqual(nagViolations(s.app, s.stack), []);
    assert.deepEqual(Annotations.fromStack(s.stack).findWarning('*', Match.anyValue()), []);
  });
});

describe('validation at synthesis', () => {
  it('refuses 0.0.0.0/0 sources unless allowPublicIngress is set', () => {
    assert.throws(() => synth({ forwarderCidrs: '0.0.0.0/0' }), /allowPublicIngress/);
    assert.throws(() => synth({ operatorCidrs: '::/0' }), /allowPublicIngress/);
  });

  it('refuses a replication factor above the store fleet minimum', () => {
    assert.throws(() => synth({ storeMin: 2, replicationFactor: 3 }), /replicationFactor 3 exceeds/);
  });

  it('refuses an existing VPC without its CIDR and subnets (no lookups)', () => {
    assert.throws(() => synth({ vpcId: 'vpc-1' }), /vpcCidr/);
  });

  it('the nag checker does flag a non-compliant resource (the clean results above are real)', () => {
    const app = new App();
    const stack = new Stack(app, 'Bad');
    const sg = new ec2.SecurityGroup(stack, 'Open', { vpc: new ec2.Vpc(stack, 'Vpc'), description: 'x' });
    sg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(7650));
    const ids = nagViolations(app, stack).map((v) => v.ruleName);
    assert.ok(ids.includes('AwsSolutions-EC23'), ids.join(','));
  });
});
