from affise_s3_assets.demo.events import main

if __name__ == "__main__":
    main()
