#!/bin/sh
# Installs the two Debian wallpaper packages the training set draws on (never committed).
# The other sources (scikit-image's and scikit-learn's bundled photos) come with the
# Python packages. Run as root (or through sudo) on Debian/Ubuntu.
set -eu
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update
$SUDO apt-get install -y mate-backgrounds plasma-workspace-wallpapers
echo "installed: /usr/share/backgrounds/mate and /usr/share/wallpapers"
