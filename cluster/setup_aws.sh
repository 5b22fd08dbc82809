#!/usr/bin/env bash
# One-time AWS setup for cluster/gpu-cluster.yaml, with the AWS CLI and your own (admin) credentials:
#   * IAM roles + instance profiles reidloop-gpu-head and reidloop-gpu-worker, their inline policies from
#     cluster/iam/*.json (the worker: the one bucket only; the head: launch / tag / terminate this cluster's
#     GPU workers, pass the worker role, the same bucket);
#   * the security group reidloop-gpu: SSH (22) from SSH_CIDR only, all traffic between the group's nodes.
# It prints the two values to write into cluster/gpu-cluster.yaml (<ACCOUNT_ID>, <SECURITY_GROUP_ID>).
#
#   BUCKET=my-reidloop-bucket SSH_CIDR=203.0.113.7/32 bash cluster/setup_aws.sh
#
# BUCKET: the S3 bucket of `ray.storage_path` (s3://BUCKET/...); SSH_CIDR: the IPv4 range you run `ray up`
# from (your address: `curl -s https://checkip.amazonaws.com`, then /32). Optional: REGION (default
# us-west-2, as in gpu-cluster.yaml), VPC_ID (default: the region's default VPC). Run again to update the
# policies (put-role-policy replaces them) or the SSH range (other SSH sources of the group are revoked);
# existing roles, profiles and the group are reused.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
IAM="$HERE/iam"
REGION="${REGION:-us-west-2}"
CLUSTER=reidloop-gpu
HEAD="$CLUSTER-head"
WORKER="$CLUSTER-worker"

die() { echo "setup_aws.sh: $*" >&2; exit 1; }
[[ -n "${BUCKET:-}" ]] || die "set BUCKET to the S3 bucket for ray.storage_path (s3://BUCKET/...)"
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "BUCKET=$BUCKET is not an S3 bucket name"
[[ -n "${SSH_CIDR:-}" ]] || die "set SSH_CIDR to the IPv4 range you SSH from, e.g. 203.0.113.7/32"
[[ "$SSH_CIDR" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$ ]] \
  || die "SSH_CIDR=$SSH_CIDR is not an IPv4 CIDR (a.b.c.d/n)"
for octet in "${BASH_REMATCH[@]:1:4}"; do ((10#$octet <= 255)) || die "SSH_CIDR=$SSH_CIDR: bad address"; done
prefix=$((10#${BASH_REMATCH[5]}))
((prefix >= 8 && prefix <= 32)) || die "SSH_CIDR=$SSH_CIDR: SSH must not be open to the internet (prefix /8../32)"
[[ "$REGION" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]] || die "REGION=$REGION is not an AWS region"

export AWS_DEFAULT_REGION="$REGION"
ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text)"
[[ "$ACCOUNT_ID" =~ ^[0-9]{12}$ ]] || die "could not read the AWS account id (aws sts get-caller-identity)"
VPC_ID="${VPC_ID:-$(aws ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)}"
[[ "$VPC_ID" =~ ^vpc-[0-9a-f]+$ ]] || die "no default VPC in $REGION; set VPC_ID"

# --- the security group: SSH from SSH_CIDR, everything between the cluster's own nodes
SG_ID="$(aws ec2 describe-security-groups --filters "Name=vpc-id,Values=$VPC_ID" "Name=group-name,Values=$CLUSTER" \
  --query 'SecurityGroups[0].GroupId' --output text)"
if [[ ! "$SG_ID" =~ ^sg- ]]; then
  SG_ID="$(aws ec2 create-security-group --group-name "$CLUSTER" --vpc-id "$VPC_ID" \
    --description "reidloop Ray cluster: SSH from one range, all traffic within the group" \
    --tag-specifications "ResourceType=security-group,Tags=[{Key=ray-cluster-name,Value=$CLUSTER}]" \
    --query GroupId --output text)"
  echo "created security group $SG_ID ($CLUSTER) in $VPC_ID"
fi
[[ "$SG_ID" =~ ^sg-[0-9a-f]+$ ]] || die "no security group id ($SG_ID)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
render() {  # the file with its placeholders filled in; refuses to leave one behind
  sed -e "s|<ACCOUNT_ID>|$ACCOUNT_ID|g" -e "s|<REGION>|$REGION|g" -e "s|<BUCKET>|$BUCKET|g" \
      -e "s|<SECURITY_GROUP_ID>|$SG_ID|g" -e "s|<SSH_CIDR>|$SSH_CIDR|g" "$1" >"$WORK/$(basename "$1")"
  ! grep -q '<[A-Z_]*>' "$WORK/$(basename "$1")" || die "$1: a placeholder is left after rendering"
  echo "$WORK/$(basename "$1")"
}

# SSH sources other than SSH_CIDR (an earlier run's, or one added by hand) are revoked first.
for cidr in $(aws ec2 describe-security-groups --group-ids "$SG_ID" --output text \
    --query 'SecurityGroups[0].IpPermissions[?FromPort==`22`].[IpRanges[].CidrIp, Ipv6Ranges[].CidrIpv6][][]'); do
  if [[ "$cidr" != "$SSH_CIDR" && "$cidr" != None ]]; then
    if [[ "$cidr" == *:* ]]; then
      aws ec2 revoke-security-group-ingress --group-id "$SG_ID" \
        --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,Ipv6Ranges=[{CidrIpv6=$cidr}]" >/dev/null
    else
      aws ec2 revoke-security-group-ingress --group-id "$SG_ID" --protocol tcp --port 22 --cidr "$cidr" >/dev/null
    fi
    echo "revoked SSH from $cidr"
  fi
done
ingress="$(render "$IAM/security-group-ingress.json")"
aws ec2 authorize-security-group-ingress --group-id "$SG_ID" --ip-permissions "file://$ingress" >/dev/null \
  2>"$WORK/ingress.err" || grep -q InvalidPermission.Duplicate "$WORK/ingress.err" || { cat "$WORK/ingress.err" >&2; exit 1; }

# --- the two roles, each in its instance profile of the same name, with its inline policy
for pair in "$WORKER:worker-policy.json" "$HEAD:head-policy.json"; do
  name="${pair%%:*}"
  policy="$(render "$IAM/${pair#*:}")"
  if ! aws iam get-role --role-name "$name" >/dev/null 2>&1; then
    aws iam create-role --role-name "$name" --assume-role-policy-document "file://$IAM/ec2-trust-policy.json" \
      --description "reidloop Ray cluster ($CLUSTER)" >/dev/null
    echo "created role $name"
  fi
  aws iam put-role-policy --role-name "$name" --policy-name "$name" --policy-document "file://$policy"
  if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
    echo "created instance profile $name"
  fi
done

echo
echo "Done. Write these into cluster/gpu-cluster.yaml (or run the sed line below):"
echo "  <ACCOUNT_ID>        -> $ACCOUNT_ID"
echo "  <SECURITY_GROUP_ID> -> $SG_ID"
echo "  sed -i -e 's/<ACCOUNT_ID>/$ACCOUNT_ID/g' -e 's/<SECURITY_GROUP_ID>/$SG_ID/g' cluster/gpu-cluster.yaml"
echo "and use s3://$BUCKET/... as ray.storage_path."
