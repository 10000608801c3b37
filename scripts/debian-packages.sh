# Sourced by test.sh, demo.sh and hellobench/run.sh: installs the Debian
# packages that are missing, each named as COMMAND=PACKAGE (installed when
# COMMAND is not on the PATH) or PACKAGE (when dpkg does not know it).
#
#   . scripts/debian-packages.sh
#   need_debian_packages docker-registry=docker-registry busybox-static
#
# Returns 1 (installing nothing) when not root or without apt-get.

# What ringstar's end-to-end runs use: the registry, containerd with runc
# and ctr-remote, protoc for containerd's API, a static busybox for images,
# podman (ringstar-store, the additional layer store), prometheus (the
# metrics scraped for real, and promtool).
RINGSTAR_RUNTIME_PACKAGES=(
  docker-registry=docker-registry containerd=containerd runc=runc
  ctr-remote=stargz-snapshotter protoc=protobuf-compiler busybox-static
  podman=podman netavark prometheus=prometheus
)

need_debian_packages() {
  local missing=() want
  for want in "$@"; do
    case $want in
      *=*) command -v "${want%%=*}" >/dev/null || missing+=("${want#*=}") ;;
      *) dpkg -s "$want" >/dev/null 2>&1 || missing+=("$want") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "not root or no apt-get: cannot install ${missing[*]}" >&2
    return 1
  fi
  echo "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
