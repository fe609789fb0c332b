{
  "apiVersion": "fleetgate/v1",
  "kind": "ModelPackSignature",
  "algorithm": "ed25519",
  "keyId": "1b79400653d3951a39d9118971cb26647827e4c58ecc41c63029e48d12cc8bb1",
  "signature": "Gz2x34ITnpp/CFOtOMTDZ0aNiKyP7V3ZiR7d+61DPMiaoWz1M4nW8xSSECqr93HUnoo1si6VDEuhyt89FME/Bw=="
}
