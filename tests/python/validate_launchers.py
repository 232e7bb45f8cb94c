"""Validates the shipped launchers offline: the Kubernetes manifests against the Kubernetes API
schema (kubernetes-validate, strict: unknown fields refused) for 1.29, the first release with
backoffLimitPerIndex in beta, and the newest the package ships; the AWS Batch requests against
the Batch API model botocore ships (RegisterJobDefinition, SubmitJob). Then checks what the
schemas cannot: the shard index comes from the scheduler (`--shard auto`), exit code 2 is never
retried, GPUs are requested, credentials come from a Secret or a role, never written inline.
Also shows that each validator rejects a broken copy, so a pass means something.

Usage: validate_launchers.py LAUNCH_DIR
"""
import copy
import json
import pathlib
import sys

import botocore.session
import kubernetes_validate
import yaml
from botocore.validate import ParamValidator

K8S_VERSIONS = ["1.29.0", "1.37.0"]


def k8s_errors(doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return None
    except kubernetes_validate.ValidationError as e:
        return str(e).splitlines()[0]


def batch_errors(operation, params):
    model = botocore.session.get_session().get_service_model("batch")
    report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
    return report.generate_report() if report.has_errors() else None


def check(ok, what):
    if not ok:
        sys.exit(f"FAIL: {what}")


def main():
    launch = pathlib.Path(sys.argv[1])
    checked = []
    for path in sorted((launch / "kubernetes").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for version in K8S_VERSIONS:
            err = k8s_errors(doc, version)
            check(err is None, f"{path.name} against Kubernetes {version}: {err}")
        spec = doc["spec"]
        container = spec["template"]["spec"]["containers"][0]
        check(container["resources"]["limits"].get("nvidia.com/gpu") == 1, f"{path.name}: no GPU requested")
        env = {e["name"]: e for e in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            check("secretKeyRef" in env[key].get("valueFrom", {}) and "value" not in env[key], f"{path.name}: {key} not from a Secret")
        if container["args"][0] == "run":
            check(spec["completionMode"] == "Indexed" and "backoffLimitPerIndex" in spec, f"{path.name}: not an Indexed Job with per-index retries")
            check(container["args"][container["args"].index("--shard") + 1] == "auto", f"{path.name}: the shard index must come from JOB_COMPLETION_INDEX")
            rules = spec["podFailurePolicy"]["rules"]
            check(any(r["action"] == "FailIndex" and 2 in r["onExitCodes"]["values"] for r in rules), f"{path.name}: exit code 2 is retried")
        # A broken copy must be refused: a misspelt field, and a wrong type.
        broken = copy.deepcopy(doc)
        broken["spec"]["completionsMode"] = "Indexed"
        check(k8s_errors(broken, K8S_VERSIONS[-1]) is not None, f"{path.name}: a misspelt field passed validation")
        broken = copy.deepcopy(doc)
        broken["spec"]["backoffLimit" if "backoffLimit" in doc["spec"] else "backoffLimitPerIndex"] = "three"
        check(k8s_errors(broken, K8S_VERSIONS[-1]) is not None, f"{path.name}: a wrong type passed validation")
        checked.append(path.name)

    definition = json.loads((launch / "aws-batch/job-definition.json").read_text())
    err = batch_errors("RegisterJobDefinition", definition)
    check(err is None, f"job-definition.json: {err}")
    command = definition["containerProperties"]["command"]
    check(command[command.index("--shard") + 1] == "auto", "job-definition.json: the shard index must come from AWS_BATCH_JOB_ARRAY_INDEX")
    exits = definition["retryStrategy"]["evaluateOnExit"]
    check(exits[0] == {"onExitCode": "2", "action": "EXIT"}, "job-definition.json: exit code 2 must end the job first")
    check(any(r["type"] == "GPU" for r in definition["containerProperties"]["resourceRequirements"]), "job-definition.json: no GPU requested")
    check(not any("SECRET" in e["name"] or "KEY" in e["name"] for e in definition["containerProperties"].get("environment", [])), "job-definition.json: credentials inline")
    submit = json.loads((launch / "aws-batch/submit-shards.json").read_text())
    err = batch_errors("SubmitJob", submit)
    check(err is None, f"submit-shards.json: {err}")
    check(submit["arrayProperties"]["size"] >= 2, "submit-shards.json: not an array job")
    broken = copy.deepcopy(definition)
    broken["retryStrategy"]["attempts"] = "four"
    check(batch_errors("RegisterJobDefinition", broken) is not None, "a wrong type passed the Batch model")
    broken = copy.deepcopy(submit)
    broken["arrayProperty"] = broken.pop("arrayProperties")
    check(batch_errors("SubmitJob", broken) is not None, "a misspelt field passed the Batch model")
    checked += ["job-definition.json", "submit-shards.json"]
    print(json.dumps({"valid": checked, "kubernetes": K8S_VERSIONS, "botocore": botocore.__version__}))


if __name__ == "__main__":
    main()
