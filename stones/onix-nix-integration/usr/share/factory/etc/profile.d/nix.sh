# Nix for login shells (multi-user: every Nix command talks to nix-daemon).
if [ -n "${HOME:-}" ]; then
    export NIX_REMOTE=daemon
    export NIX_PROFILES="/nix/var/nix/profiles/default $HOME/.nix-profile"
    case ":$PATH:" in
        *":$HOME/.nix-profile/bin:"*) ;;
        *) export PATH="$HOME/.nix-profile/bin:/nix/var/nix/profiles/default/bin:$PATH" ;;
    esac
    export XDG_DATA_DIRS="${XDG_DATA_DIRS:-/usr/local/share:/usr/share}:$HOME/.nix-profile/share:/nix/var/nix/profiles/default/share"
fi
