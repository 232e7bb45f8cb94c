"""Puts a local dataset into a bucket, or fetches a run's tables out of one, over the S3 API.

Usage: s3_helper.py upload ENDPOINT BUCKET PREFIX LOCAL_DIR
       s3_helper.py download ENDPOINT BUCKET PREFIX LOCAL_DIR
       s3_helper.py put ENDPOINT BUCKET KEY LOCAL_FILE
       s3_helper.py get ENDPOINT BUCKET KEY -        (prints the object)
Credentials come from the AWS_* environment variables, as for cloakbench.
"""
import pathlib
import sys

import boto3


def main():
    verb, endpoint, bucket, prefix, local = sys.argv[1:6]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    local = pathlib.Path(local)
    if verb == "upload":
        s3.create_bucket(Bucket=bucket)
        n = 0
        for f in sorted(local.rglob("*")):
            if f.is_file():
                s3.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(local).as_posix()}")
                n += 1
        print(f"uploaded {n} files")
    elif verb == "download":
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
                for o in page.get("Contents", [])]
        for key in keys:
            dest = local / key[len(prefix) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(dest))
        print("\n".join(keys))
    elif verb == "put":
        s3.put_object(Bucket=bucket, Key=prefix, Body=local.read_bytes())
    elif verb == "get":
        sys.stdout.write(s3.get_object(Bucket=bucket, Key=prefix)["Body"].read().decode())
    else:
        sys.exit(f"unknown verb {verb}")


if __name__ == "__main__":
    main()
