#!/usr/bin/env -S npx tsx
// The CDK app (`npx cdk synth|deploy`, see cdk.json): one OkLogStack configured from context,
// checked by cdk-nag's AwsSolutionsChecks (every acknowledged rule is justified in code).
import { App } from 'aws-cdk-lib';
import { buildApp } from './oklog-stack.ts';

const app = new App();
buildApp(app);
app.synth();
